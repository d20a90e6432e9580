"""`replyrank serve` as a client sees it: a real uvicorn process on 127.0.0.1 (any free port) with a
tiny bundle, and a real HTTP client (httpx). Every endpoint, auth on and off, each limit, overload
(429), the deadline (504), SIGTERM draining, and a schemathesis fuzz of /openapi.json.

Where a test needs requests that take a while, the server runs with every decode step slowed by a
sleep (`step_s`), so timings do not depend on how fast this machine is. A test that waits for the
server polls for what it waits for (`wait_until`), never sleeps a fixed time."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import jsonschema
import pytest
import schemathesis
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance, not_a_server_error, response_headers_conformance, response_schema_conformance, status_code_conformance,
)

import replyrank
from replyrank.bot import RESULT_SCHEMA
from replyrank.cli import main
from replyrank.options import MAX_CANDIDATES, deadline

COMMENT = "what do you think about the new library in town"
QUICK = {"candidates": 2, "max_new_tokens": 6, "seed": 1}
RESULT = json.loads(RESULT_SCHEMA.read_text())
T = TypeVar("T")

# the launcher: optionally slow each forward pass of the generator, optionally hold the bundle's
# load until a file exists, then run the real `replyrank serve`
_LAUNCH = """
import sys, time
from pathlib import Path
step_s, hold = float(sys.argv[1]), sys.argv[2]
from replyrank import bot, generate
if step_s:
    forward = generate.Generator.forward
    def slow(self, *args, **kwargs):
        time.sleep(step_s)
        return forward(self, *args, **kwargs)
    generate.Generator.forward = slow
if hold:
    load = bot.Bot.__init__
    def held(self, *args, **kwargs):
        given_up = time.monotonic() + 60
        while not Path(hold).exists() and time.monotonic() < given_up:
            time.sleep(0.05)
        load(self, *args, **kwargs)
    bot.Bot.__init__ = held
from replyrank.cli import main
main(["serve", *sys.argv[3:]], prog_name="replyrank")
"""


def wait_until(condition: Callable[[], T], what: str, timeout_s: float = 30.0) -> T:
    """Poll `condition` until it returns something true, and return that; fail after `timeout_s`."""
    given_up = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < given_up, f"gave up after {timeout_s:g} s waiting for {what}"
        time.sleep(0.02)
    return found


class Server:
    def __init__(self, process: subprocess.Popen, log: Path, url: str):
        self.process, self.log, self.url = process, log, url

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def is_ready(self) -> bool:
        return httpx.get(f"{self.url}/ready").status_code == 200

    def in_progress(self) -> int:
        """Requests running or queued, as /v1/info reports them (for a server without an API key)."""
        return httpx.get(f"{self.url}/v1/info").json()["server"]["in_progress"]


@contextmanager
def serving(bundle: Path, tmp_path: Path, *args: str, step_s: float = 0.0, hold: Path | None = None, ready: bool = True) -> Iterator[Server]:
    log = tmp_path / f"serve-{time.monotonic_ns()}.log"
    command = [sys.executable, "-c", _LAUNCH, str(step_s), str(hold or ""), "--bundle", str(bundle), "--port", "0", *args]
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        def bound() -> re.Match | None:
            assert process.poll() is None, log.read_text()
            return re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))

        server = Server(process, log, wait_until(bound, "the server to listen").group(1))
        if ready:
            wait_until(server.is_ready, "the bundle to load")
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _is_error(response: httpx.Response, status: int, type_: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "type"} and body["type"] == type_, body
    assert "Traceback" not in body["error"]
    return body


@pytest.fixture(scope="module")
def server(gpt2_bundle, tmp_path_factory) -> Iterator[Server]:
    with serving(gpt2_bundle, tmp_path_factory.mktemp("serve"), "--threads", "1") as running:
        yield running


# ---------------------------------------------------------------- endpoints


def test_reply_and_score_answer_what_the_cli_prints(server, gpt2_bundle):
    with server.client() as client:
        reply = client.post("/v1/reply", json={"comment": COMMENT, **QUICK})
        score = client.post("/v1/score", json={"comment": COMMENT, "replies": ["i think it is great", "no idea"]})
    assert reply.status_code == 200 and score.status_code == 200
    jsonschema.validate(reply.json(), RESULT)
    jsonschema.validate(score.json(), RESULT)
    bundle = str(gpt2_bundle)
    cli_reply = CliRunner().invoke(main, ["reply", COMMENT, "--bundle", bundle, "-n", "2", "--max-new-tokens", "6", "--seed", "1", "--json"])
    cli_rank = CliRunner().invoke(main, ["rank", "--comment", COMMENT, "i think it is great", "no idea", "--bundle", bundle, "--json"])
    for served, printed in ((reply.json(), json.loads(cli_reply.stdout)), (score.json(), json.loads(cli_rank.stdout))):
        served.pop("timings_ms"), printed.pop("timings_ms")
        assert served == printed
    assert "Server-Timing" in reply.headers


def test_health_ready_info_and_the_access_log(server):
    with server.client() as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").json() == {"status": "ready"}
        info = client.get("/v1/info").json()
        assert client.get("/docs").status_code == 200
        schema = client.get("/openapi.json").json()
        _is_error(client.get("/no/such/path"), 404, "not_found")
    assert info["limits"]["max_candidates"] == MAX_CANDIDATES
    assert info["server"]["auth"] is False and info["server"]["threads"] == 1
    assert set(info["versions"]) >= {"replyrank", "onnxruntime", "fastapi", "uvicorn"}
    assert {"/v1/reply", "/v1/score", "/v1/info", "/health", "/ready"} <= set(schema["paths"])
    assert schema["components"]["schemas"]["Result"]["required"] == RESULT["required"]
    # a request's line is written once its response is sent, so the client may see the answer first
    wait_until(lambda: re.search(r"127\.0\.0\.1 GET /no/such/path 404 \d+\.\d ms", server.stderr()), "the access log")
    assert re.search(r"127\.0\.0\.1 GET /health 200 \d+\.\d ms", server.stderr())


def test_ready_is_503_until_the_bundle_is_loaded(gpt2_bundle, tmp_path):
    hold = tmp_path / "go"
    with serving(gpt2_bundle, tmp_path, hold=hold, ready=False) as server, server.client() as client:
        assert client.get("/health").status_code == 200
        not_ready = _is_error(client.get("/ready"), 503, "not_ready")
        assert "loading" in not_ready["error"] and client.get("/ready").headers["Retry-After"] == "1"
        _is_error(client.post("/v1/reply", json={"comment": COMMENT}), 503, "not_ready")
        hold.touch()
        wait_until(server.is_ready, "the bundle to load")
        assert client.post("/v1/reply", json={"comment": COMMENT, **QUICK}).status_code == 200


def test_a_bundle_that_cannot_load_stops_the_server(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    run = subprocess.run([sys.executable, "-m", "replyrank", "serve", "--bundle", str(broken), "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "Error: cannot load the bundle" in run.stderr and "Traceback" not in run.stderr
    missing = subprocess.run([sys.executable, "-m", "replyrank", "serve", "--bundle", str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [missing.stderr.strip()] and "--bundle" in missing.stderr


# ---------------------------------------------------------------- auth


def test_api_key(gpt2_bundle, tmp_path):
    key = tmp_path / "key"
    key.write_text("s3cret-key\n")
    with serving(gpt2_bundle, tmp_path, "--api-key-file", str(key)) as server, server.client() as client:
        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200  # probes stay public
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0LWtleQ=="}, {"Authorization": "Bearer s3cret-ke"}):
            refused = client.get("/v1/info", headers=headers)
            _is_error(refused, 401, "unauthorized")
            assert refused.headers["WWW-Authenticate"] == "Bearer"
        _is_error(client.post("/v1/reply", json={"comment": COMMENT}), 401, "unauthorized")
        _is_error(client.post("/v1/score", json={"comment": COMMENT, "replies": ["x"]}), 401, "unauthorized")
        good = {"Authorization": "Bearer s3cret-key"}
        assert client.get("/v1/info", headers=good).json()["server"]["auth"] is True
        assert client.post("/v1/reply", json={"comment": COMMENT, **QUICK}, headers=good).status_code == 200
        assert "HTTPBearer" in client.get("/openapi.json").json()["components"]["securitySchemes"]


def test_binding_beyond_loopback_without_a_key_warns(gpt2_bundle, monkeypatch):
    import uvicorn

    bound = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: bound.setdefault("host", self.config.host))
    result = CliRunner().invoke(main, ["serve", "--bundle", str(gpt2_bundle), "--host", "0.0.0.0"])  # nothing is bound
    assert result.exit_code == 0, result.output
    assert bound["host"] == "0.0.0.0" and "warning: serving on 0.0.0.0 without --api-key-file" in result.stderr
    quiet = CliRunner().invoke(main, ["serve", "--bundle", str(gpt2_bundle)])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr


def test_without_the_server_extra_serve_names_the_install_command():
    code = (
        "import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None\n"
        "from replyrank.cli import main\n"
        "main(['serve', '--help'], prog_name='replyrank')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr.strip() == (
        "Error: `replyrank serve` needs the server extra (fastapi is missing): pip install 'replyrank[server]'"
    )
    light = "import sys\nimport replyrank.cli\nassert 'fastapi' not in sys.modules and 'uvicorn' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", light], check=True, timeout=60)  # the other commands do not pay for the server


def test_threads_never_oversubscribe_the_cores(gpt2_bundle):
    from replyrank.serve import plan_threads

    assert plan_threads(None, None, 4) == (4, 1)
    assert plan_threads(1, None, 4) == (1, 4)
    assert plan_threads(None, 2, 4) == (2, 2)
    refused = CliRunner().invoke(main, ["serve", "--bundle", str(gpt2_bundle), "--threads", "64", "--max-concurrency", "64"])
    assert refused.exit_code == 2 and "cores" in refused.stderr


# ---------------------------------------------------------------- limits


def test_each_limit(gpt2_bundle, tmp_path):
    args = ["--max-body-bytes", "3000", "--max-comment-chars", "100", "--max-candidates", "3", "--max-new-tokens", "8",
            "--max-replies", "2", "--max-reply-chars", "50"]
    with serving(gpt2_bundle, tmp_path, *args) as server, server.client() as client:
        big = _is_error(client.post("/v1/reply", content=json.dumps({"comment": "x" * 4000}), headers={"Content-Type": "application/json"}),
                        413, "payload_too_large")
        assert "3000 bytes" in big["error"]
        chunked = client.post("/v1/reply", content=iter([b'{"comment": "', b"x" * 4000, b'"}']), headers={"Content-Type": "application/json"})
        _is_error(chunked, 413, "payload_too_large")
        refused = {
            "comment": {"comment": "y" * 101},
            "candidates": {"comment": COMMENT, "candidates": 4},
            "max_new_tokens": {"comment": COMMENT, "max_new_tokens": 9},
            "seed": {"comment": COMMENT, "seed": -5},
            "top_p": {"comment": COMMENT, "top_p": 2},
            "unknown": {"comment": COMMENT, "beams": 4},
        }
        for field, body in refused.items():
            error = _is_error(client.post("/v1/reply", json=body), 422, "invalid_request")
            assert field in error["error"] or field == "unknown", error
        _is_error(client.post("/v1/reply", json={"comment": "   "}), 422, "invalid_request")  # empty after stripping: the library says so
        _is_error(client.post("/v1/reply", content=b"{not json", headers={"Content-Type": "application/json"}), 422, "invalid_request")
        _is_error(client.post("/v1/score", json={"comment": COMMENT, "replies": ["a", "b", "c"]}), 422, "invalid_request")
        _is_error(client.post("/v1/score", json={"comment": COMMENT, "replies": ["z" * 51]}), 422, "invalid_request")
        _is_error(client.post("/v1/score", json={"comment": COMMENT, "replies": []}), 422, "invalid_request")
        assert client.post("/v1/reply", json={"comment": "y" * 100, "candidates": 3, "max_new_tokens": 8, "seed": 0}).status_code == 200
        assert client.get("/v1/info").json()["limits"]["max_candidates"] == 3
    assert "Traceback" not in server.stderr()


def test_limits_above_the_librarys_are_refused(gpt2_bundle):
    refused = CliRunner().invoke(main, ["serve", "--bundle", str(gpt2_bundle), "--max-candidates", "100000"])
    assert refused.exit_code == 1 and "--max-candidates must be between 1 and 32" in refused.stderr


def test_the_library_and_the_cli_refuse_what_would_exhaust_the_machine(gpt2_bundle):
    bot = replyrank.load(gpt2_bundle)
    for options in ({"candidates": 100_000}, {"max_new_tokens": 10**6}, {"seed": -5}, {"stop": ("a",) * 100}):
        with pytest.raises(replyrank.InputError):
            bot.reply(COMMENT, **options)
    # a comment longer than any prompt is cut before it is tokenized, and the result says so
    assert bot.reply("pasta " * 1_000_000, **QUICK).truncated
    for args in (["-n", "100000"], ["--seed", "-5"]):
        run = subprocess.run([sys.executable, "-m", "replyrank", "reply", "hi", "--bundle", str(gpt2_bundle), *args],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 1 and "Traceback" not in run.stderr
        assert run.stderr.startswith("Error: ") and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_a_deadline_stops_the_decode(gpt2_bundle):
    bot = replyrank.load(gpt2_bundle)
    with deadline(time.monotonic() - 1), pytest.raises(replyrank.DeadlineExceeded, match="after 0 of up to 8 new tokens"):
        bot.reply(COMMENT, candidates=2, max_new_tokens=8)
    assert bot.reply(COMMENT, **QUICK).best is not None  # the deadline ended with its block


# ---------------------------------------------------------------- load: 429, 504, SIGTERM


def _post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """POST every body at once, each from its own thread and connection."""
    responses: list[httpx.Response | None] = [None] * len(bodies)

    def post(i: int) -> None:
        responses[i] = httpx.post(f"{url}/v1/reply", json=bodies[i], timeout=60)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def test_overload_gets_429_with_retry_after(gpt2_bundle, tmp_path):
    long = {"comment": COMMENT, "candidates": 1, "max_new_tokens": 20, "min_new_tokens": 20, "seed": 0}  # ~0.6 s each
    with serving(gpt2_bundle, tmp_path, "--max-concurrency", "1", "--threads", "1", "--max-queue", "1", step_s=0.03) as server:
        responses = _post_all(server.url, [long] * 6)
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429} and statuses.count(200) >= 2, statuses
    for response in responses:
        if response.status_code == 429:
            _is_error(response, 429, "overloaded")
            assert int(response.headers["Retry-After"]) >= 1


def test_the_deadline_stops_the_decode_and_answers_504(gpt2_bundle, tmp_path):
    long = {"comment": COMMENT, "candidates": 2, "max_new_tokens": 150, "min_new_tokens": 150, "seed": 0}  # 150 x 30 ms: 4.5 s
    args = ["--max-concurrency", "1", "--threads", "1", "--timeout", "0.5"]
    with serving(gpt2_bundle, tmp_path, *args, step_s=0.03) as server, server.client() as client:
        started = time.monotonic()
        timed_out = client.post("/v1/reply", json=long)
        elapsed = time.monotonic() - started
        _is_error(timed_out, 504, "timeout")
        assert elapsed < 1.5, elapsed
        # the decode really stopped: the one worker is free at once (a queued request would miss its 0.5 s)
        assert client.post("/v1/reply", json={"comment": COMMENT, **QUICK}).status_code == 200


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def test_sigterm_finishes_requests_in_flight_then_exits(gpt2_bundle, tmp_path):
    long = {"comment": COMMENT, "candidates": 1, "max_new_tokens": 60, "min_new_tokens": 60, "seed": 0}  # 60 x 30 ms: 1.8 s
    with serving(gpt2_bundle, tmp_path, "--max-concurrency", "1", "--threads", "1", step_s=0.03) as server:
        in_flight: list[httpx.Response] = []
        request = threading.Thread(target=lambda: in_flight.extend(_post_all(server.url, [long])))
        request.start()
        wait_until(server.in_progress, "the request to be admitted")
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: _refused(server.url), "the server to stop accepting")
        assert request.is_alive()  # it stopped accepting while the request was still decoding
        request.join(30)
        assert in_flight and in_flight[0].status_code == 200, in_flight
        assert len(in_flight[0].json()["candidates"][0]["text"]) > 0
        # uvicorn re-raises the signal once it has drained, so the exit status is SIGTERM's, as for any service
        assert server.process.wait(15) in (0, -signal.SIGTERM)
    assert "Shutting down" in server.stderr() and "Finished server process" in server.stderr()


# ---------------------------------------------------------------- fuzz


@pytest.fixture(scope="module")
def fuzz_schema(gpt2_bundle, tmp_path_factory):
    args = ["--max-candidates", "3", "--max-new-tokens", "6", "--max-replies", "4", "--max-comment-chars", "300", "--max-reply-chars", "100"]
    with serving(gpt2_bundle, tmp_path_factory.mktemp("fuzz"), "--threads", "1", *args) as server:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")


# Driven through Hypothesis directly rather than schemathesis's pytest plugin, whose parametrization
# breaks on pytest 9: every operation of the live schema gets its own examples.
FUZZ_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
               response_schema_conformance]


def test_fuzzed_requests_get_no_5xx_and_answers_that_match_the_schema(fuzz_schema) -> None:
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/reply", "/v1/score", "/health"}

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case) -> None:
            case.call_and_validate(checks=FUZZ_CHECKS)

        call()
