"""Load test for `replyrank serve`: N concurrent clients x M requests each, against a server on this machine.

Every client is a thread with its own keep-alive connection (httpx), posting `/v1/reply` (or
`/v1/score`) back to back. Reported: throughput, latency p50 / p95 / p99 of the 200s, the count of
each status, and the server's resident memory (RSS) before, during (peak) and after. The run is
bounded in requests and in time (`--max-seconds`), and talks to loopback addresses only.

    replyrank serve --bundle DIR &                                  # the server under test
    python benchmarks/load.py --clients 2 --requests 50            # one run
    python benchmarks/load.py --targets --out benchmarks/results/load.json

`--targets` runs the checks of issue #15 one after another and says whether each is met:
  - 1 client, then 2 clients: p99 at 2 concurrent clients <= 3x a single request's median latency;
  - 4x overload (4 x (max_concurrency + max_queue) clients, from /v1/info): nothing but 200 and 429;
  - 2,000 requests: RSS flat (after <= 1.1 x after-warm-up + 20 MB).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import platform
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from portable import portable

COMMENTS = (
    "Any tips for surviving finals week?",
    "I just got accepted into my dream college but I can't afford it. What should I do?",
    "Is a gap year worth it?",
    "has anyone tried the pasta place near campus",
    "how many hours a week do you study for finals",
)


@dataclass
class Run:
    """One load run: what was asked, and what came back."""

    clients: int
    requests_per_client: int
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # of the 200s
    throughput_rps: float = 0.0  # 200s per second
    rss_mb: dict[str, float] = field(default_factory=dict)  # server: before, peak, after
    retry_after: list[str] = field(default_factory=list)  # the distinct Retry-After values seen
    stopped_early: bool = False  # --max-seconds ran out


def loopback_only(url: str) -> str:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"load.py talks to this machine only (127.0.0.1, localhost, ::1), not {host!r}")
    return url.rstrip("/")


def server_process(url: str, pid: int | None) -> psutil.Process | None:
    """The server's process: --pid, else the one listening on the URL's port."""
    if pid:
        return psutil.Process(pid)
    port = urlsplit(url).port or 80
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port and connection.pid:
            return psutil.Process(connection.pid)
    return None


def rss_mb(process: psutil.Process | None) -> float:
    return process.memory_info().rss / 2**20 if process else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank: an observed value, never an interpolation."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def body(endpoint: str, i: int, candidates: int, max_new_tokens: int) -> dict:
    comment = COMMENTS[i % len(COMMENTS)]
    if endpoint == "score":
        return {"comment": comment, "replies": ["Good luck!", "Sleep more, study less.", "no idea, sorry"]}
    return {"comment": comment, "candidates": candidates, "max_new_tokens": max_new_tokens, "seed": i}


def load(
    url: str, clients: int, requests: int, process: psutil.Process | None, endpoint: str = "reply", candidates: int = 8,
    max_new_tokens: int = 40, headers: dict[str, str] | None = None, max_seconds: float = 600.0, timeout_s: float = 120.0,
) -> Run:
    """`clients` threads, each posting `requests` requests back to back; stops by `max_seconds` at the latest."""
    run = Run(clients, requests)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    retry_after: set[str] = set()
    lock = threading.Lock()
    stop_at = time.monotonic() + max_seconds
    peak = [rss_mb(process)]
    run.rss_mb["before"] = peak[0]
    done = threading.Event()

    def watch_memory() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], rss_mb(process))

    def client(number: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout_s, headers=headers) as session:
            for k in range(requests):
                if time.monotonic() > stop_at:
                    run.stopped_early = True
                    return
                started = time.perf_counter()
                try:
                    response = session.post(f"/v1/{endpoint}", json=body(endpoint, number * requests + k, candidates, max_new_tokens))
                    status = str(response.status_code)
                except httpx.HTTPError as error:
                    status, response = type(error).__name__, None
                elapsed_ms = (time.perf_counter() - started) * 1e3
                with lock:
                    statuses[status] += 1
                    if status == "200":
                        latencies.append(elapsed_ms)
                    elif response is not None and "Retry-After" in response.headers:
                        retry_after.add(response.headers["Retry-After"])
                if response is not None and response.status_code == 429:
                    time.sleep(0.05)  # a client that retries at once only measures the server's refusals

    watcher = threading.Thread(target=watch_memory, daemon=True)
    watcher.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    run.rss_mb["after"] = rss_mb(process)
    run.rss_mb["peak"] = max(peak[0], run.rss_mb["after"])
    run.statuses = dict(sorted(statuses.items()))
    run.latency_ms = {f"p{q}": round(percentile(latencies, q), 1) for q in (50, 95, 99)}
    run.latency_ms["max"] = round(max(latencies), 1) if latencies else float("nan")
    run.throughput_rps = round(len(latencies) / run.seconds, 2) if run.seconds else 0.0
    run.retry_after = sorted(retry_after)
    return run


def describe(name: str, run: Run) -> str:
    r, t = run.rss_mb, run.latency_ms
    return (f"{name}: {run.clients} clients x {run.requests_per_client} in {run.seconds:.1f} s, {run.throughput_rps} ok/s, "
            f"p50 {t['p50']} ms, p95 {t['p95']} ms, p99 {t['p99']} ms, statuses {run.statuses}, "
            f"RSS {r['before']:.0f} -> {r['after']:.0f} MB (peak {r['peak']:.0f})" + (" [stopped by --max-seconds]" if run.stopped_early else ""))


def targets(url: str, process: psutil.Process | None, args: argparse.Namespace, headers: dict[str, str]) -> dict:
    info = httpx.get(f"{url}/v1/info", headers=headers, timeout=30).raise_for_status().json()
    server = info["server"]
    common = {"process": process, "endpoint": args.endpoint, "candidates": args.candidates, "max_new_tokens": args.max_new_tokens,
              "headers": headers, "max_seconds": args.max_seconds}
    runs, checks = {}, {}
    runs["warm-up"] = load(url, 1, 3, **common)
    runs["1 client"] = load(url, 1, args.requests, **common)
    runs["2 clients"] = load(url, 2, args.requests, **common)
    single, pair = runs["1 client"].latency_ms["p50"], runs["2 clients"].latency_ms["p99"]
    checks["p99 at 2 clients <= 3x one request's median"] = {"met": pair <= 3 * single, "p99_2_clients_ms": pair, "median_1_client_ms": single}
    overload_clients = 4 * (server["max_concurrency"] + server["max_queue"])
    runs["4x overload"] = load(url, overload_clients, args.overload_requests, **common)
    seen = set(runs["4x overload"].statuses)
    checks["4x overload: only 200 and 429"] = {"met": seen <= {"200", "429"} and "200" in seen, "statuses": runs["4x overload"].statuses}
    per_client = max(1, args.soak_requests // 2)
    runs["soak"] = load(url, 2, per_client, **common)
    soak = runs["soak"]
    flat = soak.rss_mb["after"] <= 1.1 * soak.rss_mb["before"] + 20
    answered = sum(soak.statuses.values())  # fewer than asked when --max-seconds ran out
    checks[f"RSS flat over {answered} requests"] = {"met": flat, "rss_mb": soak.rss_mb, "statuses": soak.statuses}
    for name, run in runs.items():
        print(describe(name, run), file=sys.stderr)
    for name, check in checks.items():
        print(f"{'MET' if check['met'] else 'MISSED'}: {name}: {check}", file=sys.stderr)
    return {"server": server, "bundle": info["bundle"].get("path"), "versions": info["versions"],
            "runs": {name: asdict(run) for name, run in runs.items()}, "checks": checks}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the server (loopback addresses only)")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--endpoint", choices=("reply", "score"), default="reply")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--api-key-file", default=None)
    parser.add_argument("--pid", type=int, default=None, help="the server's pid (default: whoever listens on the URL's port)")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="each run stops by then, whatever is left")
    parser.add_argument("--targets", action="store_true", help="run issue #15's checks instead of one run")
    parser.add_argument("--overload-requests", type=int, default=3, help="requests per client in the overload run")
    parser.add_argument("--soak-requests", type=int, default=2000, help="requests in the RSS run")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    url = loopback_only(args.url)
    headers = {"Authorization": f"Bearer {Path(args.api_key_file).read_text().strip()}"} if args.api_key_file else {}
    httpx.get(f"{url}/ready", timeout=10).raise_for_status()
    process = server_process(url, args.pid)
    meta = {"url": url, "cpu": platform.processor() or platform.machine(), "cores": psutil.cpu_count(),
            "load_average": list(psutil.getloadavg()), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "request": body(args.endpoint, 0, args.candidates, args.max_new_tokens), "server_pid": process.pid if process else None}
    if args.targets:
        results = {**meta, **targets(url, process, args, headers)}
    else:
        run = load(url, args.clients, args.requests, process, args.endpoint, args.candidates, args.max_new_tokens, headers, args.max_seconds)
        print(describe("load", run), file=sys.stderr)
        results = {**meta, "run": asdict(run)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(portable(json.dumps(results, indent=2)) + "\n")
    return results


if __name__ == "__main__":
    main()
