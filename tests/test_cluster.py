"""`replyrank batch --address` on a Ray cluster of several nodes, and on one that loses a node mid-run.

The cluster runs on this machine: `ray.cluster_utils.Cluster` starts a head and worker nodes, each a
raylet with its own object store and workers, as `ray start` does on separate machines (they share
the filesystem, as nodes of a real cluster share the one that holds the dumps, the bundle and
--out). Its session files go to a temporary folder of its own (`RAY_TMPDIR`), so no other Ray on the
machine finds it, and every process it started is killed when the test ends, passed or not (and by
Ray's reaper process if this one dies). Which node did what is read from Ray's own records: the
GCS's task events and actor table.

Both tests rank the same slice as a local-mode run of the same command and must write the same
rows with the same scores.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.slow  # a local run and a two-node cluster run each: minutes on two cores

REDDIT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reddit"
ADVICE = [REDDIT / "college" / "RC_CollegeAdvice.zst", REDDIT / "college" / "RS_CollegeAdvice.zst"]
RANKER_TASK = "MapWorker(MapBatches(Ranker)).submit"  # Ray Data's name for a batch sent to a Ranker actor
RANKER_ACTOR = "MapWorker(MapBatches(Ranker))"
# The GCS declares a node dead after this many missed health checks this far apart (defaults: 5 of
# 3 s), so that a lost node is noticed within the test's time.
HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_initial_delay_ms": 0}


def _command(out: Path, bundle: Path, *extra: str) -> list[str]:
    """Score mode over a slice of one subreddit's dumps, in many small shards so that a node loss lands mid-run."""
    return [sys.executable, "-m", "replyrank", "batch", *(f"--data={p}" for p in ADVICE), f"--out={out}",
            f"--bundle={bundle}", "--mode=score", "--limit=400", "--buckets=2", "--shard-rows=6", "--group-size=6", "--batch-size=2", *extra]


def _rows(out: Path) -> list[dict]:
    return sorted((row for f in (out / "results").glob("*.parquet") for row in pq.read_table(f).to_pylist()),
                  key=lambda row: row["id"])


@pytest.fixture(scope="module")
def local_run(gpt2_bundle, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The reference: the same command in local mode (a Ray of its own on two cores)."""
    if not all(p.is_file() for p in ADVICE):
        pytest.skip(f"shared Reddit data absent: {ADVICE}")
    out = tmp_path_factory.mktemp("local") / "out"
    done = subprocess.run(_command(out, gpt2_bundle, "--cpus=2"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(out)
    assert len(rows) > 100 and json.loads(done.stdout)["output_rows"] == len(rows)
    return out, rows


@dataclass
class LocalCluster:
    """A Ray cluster on this machine, and the processes its nodes started that the cluster does not track itself."""

    cluster: Any  # ray.cluster_utils.Cluster
    workers: list[Any]  # its worker nodes (ray._private.node.Node)
    orphans: list[psutil.Process] = field(default_factory=list)

    def kill_raylet(self, node: Any) -> None:
        """SIGKILL the node's raylet, as when a machine dies; its worker processes then exit by themselves."""
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        self.orphans += raylet.children(recursive=True)
        raylet.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        """Kill every node (the head last) and wait for the worker processes their raylets started."""
        started = list(self.orphans)
        for node in [*self.cluster.worker_nodes, self.cluster.head_node]:
            for info in (info for infos in (node.all_processes if node else {}).values() for info in infos):
                with contextlib.suppress(psutil.Error):
                    started += psutil.Process(info.process.pid).children(recursive=True)
        self.cluster.shutdown()
        _, alive = psutil.wait_procs(started, timeout=20)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.fixture(scope="module")
def ray_temp() -> Iterator[Path]:
    """A folder for the clusters' session files, removed with whatever Ray writes there after a cluster stops."""
    root = Path(tempfile.mkdtemp(prefix="rr-ray-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 characters
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def ray_cluster(nodes: int, ray_temp: Path) -> Iterator[LocalCluster]:
    """A head and `nodes - 1` worker nodes of one CPU each."""
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(dir=ray_temp)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", temp)  # Ray's session files and its "current cluster" address file go here
        local = LocalCluster(Cluster(shutdown_at_exit=True), [])
        try:
            local.cluster.add_node(num_cpus=1, include_dashboard=False, _system_config=HEALTH_CHECKS)
            local.workers += [local.cluster.add_node(num_cpus=1) for _ in range(nodes - 1)]
            local.cluster.wait_for_nodes()
            yield local
        finally:
            local.stop()
            shutil.rmtree(temp, ignore_errors=True)


def _ranked_on(cluster) -> Counter[str]:
    """Batches ranked per node id, from the GCS's task events: what `ray list tasks` shows, read here without the
    dashboard (it needs ray[default], which the batch extra does not install)."""
    nodes: Counter[str] = Counter()
    for event in cluster.global_state._get_all_task_events():
        if event.task_info.func_or_class_name == RANKER_TASK and event.state_updates.node_id:
            nodes[event.state_updates.node_id.hex()] += 1
    return nodes


def _rankers(cluster) -> list[dict]:
    """The GCS's actor table rows of the Ranker actors: where each last ran and how often it was restarted."""
    return [actor for actor in cluster.global_state.actor_table(None).values() if actor["ActorClassName"] == RANKER_ACTOR]


def _check_committed_whole(out: Path) -> None:
    """Every shard has one complete output file that holds the rows its counts say; nothing else is in results/."""
    shards = {s for marker in (out / "work").glob("b*.json") for s in json.loads(marker.read_text())["shards"]}
    files = sorted((out / "results").iterdir())
    assert [f.name for f in files] == sorted(f"{s}.parquet" for s in shards)  # no temporary file left, none missing
    for f in files:
        assert pq.read_table(f).num_rows == json.loads((out / "work" / f"{f.stem}.done.json").read_text())["rows"]


def test_a_two_node_cluster_ranks_on_both_nodes_and_writes_what_local_mode_writes(local_run, gpt2_bundle, ray_temp, tmp_path):
    _, expected = local_run
    with ray_cluster(2, ray_temp) as local:
        cluster, (worker,) = local.cluster, local.workers
        out = tmp_path / "out"
        done = subprocess.run(_command(out, gpt2_bundle, f"--address={cluster.address}"), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        assert summary["this_run"]["cores"] == 2 and summary["this_run"]["workers"] == 2
        ranked_on = _ranked_on(cluster)
        assert set(ranked_on) == {cluster.head_node.node_id, worker.node_id}, ranked_on  # both nodes ranked batches
    assert _rows(out) == expected  # the same rows, every column: ids, groups, ranks, realism and upvotes
    _check_committed_whole(out)


def test_a_node_lost_mid_rank_costs_no_row_and_doubles_none(local_run, gpt2_bundle, ray_temp, tmp_path):
    """SIGKILL the second node's raylet while shards are being ranked: the run finishes on the head.

    Ray Data starts its actors with max_restarts=-1 and max_task_retries=-1, so the Ranker actor of
    the lost node is created again on a node with a free CPU (the head's, once the other actor runs
    out of work) and the batches it held are sent to it again; the read tasks it held are retried
    (Ray Data's tasks retry without limit), and blocks lost with the node's object store are made
    again from their lineage. The driver, on the head, commits a shard only when every one of its
    row ids has come back, keeps each id once, and writes the file under a temporary name renamed
    into place, so nothing is half-written or doubled.
    """
    _, expected = local_run
    with ray_cluster(2, ray_temp) as local:
        cluster, (worker,) = local.cluster, local.workers
        out = tmp_path / "out"
        run = subprocess.Popen(_command(out, gpt2_bundle, f"--address={cluster.address}"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        try:
            # wait until the worker node has ranked batches (its workers report them to the GCS every second)
            # and the driver has committed shards, then kill the node's raylet: its workers die with it
            deadline = time.monotonic() + 400
            while run.poll() is None and time.monotonic() < deadline:
                if len(list((out / "results").glob("*.parquet"))) >= 3 and _ranked_on(cluster)[worker.node_id] >= 1:
                    break
                time.sleep(0.2)
            ranked_before_kill = _ranked_on(cluster)
            local.kill_raylet(worker)
            committed_at_kill = len(list((out / "results").glob("*.parquet")))
            stdout, stderr = run.communicate(timeout=600)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert run.returncode == 0, stderr[-3000:]
        shards = json.loads(stdout)["shards"]
        assert 3 <= committed_at_kill < shards, "the kill landed outside the rank step; make the work longer"

        assert ranked_before_kill[worker.node_id] >= 1, ranked_before_kill  # the lost node was ranking
        assert _ranked_on(cluster)[cluster.head_node.node_id] >= 1
        alive = {node["NodeID"]: node["Alive"] for node in cluster.global_state.node_table()}
        assert alive == {cluster.head_node.node_id: True, worker.node_id: False}
        rankers = _rankers(cluster)
        # the lost node's actor was started again (on the head): nothing of the run lives on the dead node
        assert any(actor["NumRestarts"] >= 1 for actor in rankers), rankers
        assert all(actor["Address"]["NodeID"] == cluster.head_node.node_id for actor in rankers), rankers
    rows = _rows(out)
    assert len({row["id"] for row in rows}) == len(rows)  # nothing doubled
    assert rows == expected  # nothing missing, and the same scores as the local run
    _check_committed_whole(out)
