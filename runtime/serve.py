"""`replyrank serve`: one loaded bot behind an HTTP API, for apps that are not written in Python.

It does what the inference servers people already run do (text-embeddings-inference, llama.cpp's
server):

- `GET /health` is liveness and always public; `GET /ready` answers 503 until the bundle is loaded
  (it loads in the background, so the process answers probes at once);
- one `Bot` is shared: its ONNX Runtime sessions are thread-safe, so concurrency is bounded rather
  than the model copied. Inference runs in a pool of `max_concurrency` threads, sized so that
  `max_concurrency x threads` never exceeds the cores;
- admission is bounded: at most `max_concurrency` requests run and `max_queue` wait; the next one
  gets 429 with `Retry-After` instead of a queue that grows until memory runs out;
- every request has a deadline (`timeout_s` from its arrival, queueing included), set with
  `replyrank.generate.deadline`, which the decode loop checks between steps: past it the decode
  stops, its thread is free again, and the answer is 504;
- payload caps: the body's size (413); the comment's length, candidates, max_new_tokens, replies to
  score and a reply's length (422). Every error is a JSON `{"error", "type"}`, never a traceback;
- an optional API key, sent as `Authorization: Bearer KEY` and compared in constant time;
- 127.0.0.1 by default, with a warning when bound elsewhere without a key; SIGTERM stops accepting,
  lets the requests in flight finish, then exits (uvicorn's graceful shutdown); one access-log line
  per request on stderr.

`POST /v1/reply` and `POST /v1/score` answer exactly what `replyrank reply --json` and
`replyrank rank --json` print. FastAPI and uvicorn come with the `[server]` extra and are imported
only inside the functions below, so `import replyrank` and the other commands stay light.
"""

import asyncio
import hmac
import importlib.metadata
import importlib.util
import ipaddress
import json
import logging
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import generate
from .bundle import default_bundle_dir
from .errors import DeadlineExceeded, InputError, ReplyrankError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .bot import Bot

SERVER_EXTRA = "pip install 'replyrank[server]'"
LOG = logging.getLogger("replyrank.serve")


@dataclass(frozen=True)
class Limits:
    """The most one request may ask for. The defaults are the library's own limits
    (`replyrank.generate.MAX_*`, which `Bot` enforces too); a server may only lower them."""

    max_body_bytes: int = 1 << 20  # 413 above this; 64 replies of 10,000 characters fit
    max_comment_chars: int = generate.MAX_COMMENT_CHARS
    max_candidates: int = generate.MAX_CANDIDATES
    max_new_tokens: int = generate.MAX_NEW_TOKENS
    max_replies: int = generate.MAX_REPLIES
    max_reply_chars: int = generate.MAX_REPLY_CHARS

    def check(self) -> None:
        ceilings = {f.name: getattr(generate, f.name.upper(), None) for f in fields(self)}
        for name, value in asdict(self).items():
            ceiling = ceilings[name]
            if value < 1 or (ceiling is not None and value > ceiling):
                bound = f"between 1 and {ceiling} (the library's limit)" if ceiling is not None else "at least 1"
                raise InputError(f"--{name.replace('_', '-')} must be {bound}, got {value}")


@dataclass(frozen=True)
class ServerConfig:
    """Everything `create_app` needs; `serve` fills it from its flags."""

    bundle: Path
    threads: int = 1  # ONNX Runtime threads of each session
    max_concurrency: int = 1  # requests decoding at once
    max_queue: int = 8  # requests waiting for a free slot; more get 429
    timeout_s: float = 30.0  # per-request deadline, from arrival (504 past it)
    api_key: str | None = None  # None: no authentication
    threshold: float | None = None  # realism threshold (None: the bundle's)
    strict: bool = False
    limits: Limits = field(default_factory=Limits)


class ApiError(Exception):
    """An answer other than 200: its status, a `type` clients can branch on, a one-line message."""

    def __init__(self, status: int, type_: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.headers = status, type_, message, headers or {}


_STATUS_TYPES = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid_request", 429: "overloaded", 503: "not_ready", 504: "timeout",
}


def server_missing() -> str | None:
    """The first package of the `[server]` extra that is not installed, or None (nothing is imported)."""
    for name in ("fastapi", "uvicorn"):
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ValueError:  # a module set to None in sys.modules: as good as missing
            return name
    return None


def _versions() -> dict[str, str]:
    names = ("replyrank", "onnxruntime", "tokenizers", "numpy", "fastapi", "uvicorn", "pydantic")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "unknown"
    return {**found, "python": sys.version.split()[0]}


class _Slots:
    """Bounded admission in front of a thread pool: `running + waiting <= concurrency + queue`.

    Admission is counted on the event loop's thread only, so a plain int needs no lock.
    """

    def __init__(self, concurrency: int, queue: int):
        self.concurrency, self.capacity = concurrency, concurrency + queue
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="replyrank-serve")
        self.admitted = 0
        self.mean_s = 1.0  # moving average of a request's service time, for Retry-After

    def retry_after(self) -> int:
        # about how long until the requests ahead are through the pool
        return max(1, math.ceil(self.mean_s * self.admitted / self.concurrency))

    async def run(self, work: Callable[[], Any]) -> Any:
        if self.admitted >= self.capacity:
            retry = self.retry_after()
            raise ApiError(429, "overloaded", f"the server is busy ({self.admitted} requests in progress or queued); retry in {retry} s",
                           {"Retry-After": str(retry)})
        self.admitted += 1
        try:
            started = time.perf_counter()
            result = await asyncio.get_running_loop().run_in_executor(self.pool, work)
            self.mean_s = 0.8 * self.mean_s + 0.2 * (time.perf_counter() - started)
            return result
        finally:
            self.admitted -= 1


def _error_body(type_: str, message: str) -> dict[str, str]:
    return {"error": message, "type": type_}


class _BodyLimit:
    """Refuse a request body over `max_bytes` with 413 before anything parses it (chunked bodies too)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._refuse(send)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Callable) -> None:
        message = f"the request body may be at most {self.max_bytes} bytes"
        body = json.dumps(_error_body("payload_too_large", message), separators=(",", ":")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _AccessLog:
    """One line per request on stderr: method, path, status, milliseconds."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            client = scope.get("client") or ("-", 0)
            LOG.info("%s %s %s %d %.1f ms", client[0], scope["method"], scope["path"], status, (time.perf_counter() - started) * 1e3)


def _rebase(schema: Any) -> Any:
    """A JSON Schema fragment with `#/$defs/X` references pointed at OpenAPI's `Result.X` components."""
    if isinstance(schema, dict):
        return {k: (v.replace("#/$defs/", "#/components/schemas/Result.") if k == "$ref" else _rebase(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rebase(item) for item in schema]
    return schema


def _schemas(limits: Limits) -> dict[str, Any]:
    """The request and response models, with this server's limits written into the OpenAPI schema."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field

    bundle_default = "Default: the bundle's deployment setting."

    def option(annotation: Any, **bounds: Any) -> Any:
        return Annotated[annotation | None, Field(None, description=bounds.pop("description", bundle_default), **bounds)]

    class ReplyRequest(BaseModel):
        """A comment to reply to, and how to sample the candidates (the options of `replyrank reply`)."""

        model_config = ConfigDict(extra="forbid")
        comment: str = Field(min_length=1, max_length=limits.max_comment_chars, description="The comment to reply to.")
        candidates: option(int, ge=1, le=limits.max_candidates, description=f"Candidate replies to write. {bundle_default}")
        max_new_tokens: option(int, ge=1, le=limits.max_new_tokens)
        min_new_tokens: option(int, ge=0, le=limits.max_new_tokens)
        temperature: option(float, ge=0, le=100, allow_inf_nan=False, description=f"0 = greedy. {bundle_default}")
        top_k: option(int, ge=0, le=1 << 20, description=f"0 disables. {bundle_default}")
        top_p: option(float, gt=0, le=1, allow_inf_nan=False)
        repetition_penalty: option(float, gt=0, le=100, allow_inf_nan=False)
        stop: option(list[Annotated[str, Field(min_length=1)]], max_length=generate.MAX_STOP_STRINGS,
                     description=f"Stop a candidate at any of these strings. {bundle_default}")
        max_comment_tokens: option(int, ge=1, le=1 << 20)
        seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Reproduce a run exactly (default: fresh entropy).")

    class ScoreRequest(BaseModel):
        """Replies written elsewhere, to score and rank (the arguments of `replyrank rank`)."""

        model_config = ConfigDict(extra="forbid")
        comment: str = Field(min_length=1, max_length=limits.max_comment_chars)
        replies: list[Annotated[str, Field(max_length=limits.max_reply_chars)]] = Field(min_length=1, max_length=limits.max_replies)

    class Error(BaseModel):
        """Every answer other than 200."""

        error: str = Field(description="What went wrong, and the fix, in one line.")
        type: str = Field(description="unauthorized, payload_too_large, invalid_request, overloaded, not_ready, timeout, ...")

    class Status(BaseModel):
        status: str

    class Info(BaseModel):
        bundle: dict[str, Any]
        versions: dict[str, str]
        limits: dict[str, int]
        server: dict[str, Any]

    return {m.__name__: m for m in (ReplyRequest, ScoreRequest, Error, Status, Info)}


def create_app(config: ServerConfig, load_bot: Callable[[], "Bot"] | None = None, on_load_error: Callable[[str], None] | None = None) -> "FastAPI":
    """The ASGI app. The bot is loaded in a background thread at startup (`load_bot`, by default
    `Bot(config.bundle, ...)`); until it is, `/ready` and the `/v1` routes answer 503."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from starlette.exceptions import HTTPException

    from . import __version__
    from .bot import RESULT_SCHEMA, Bot

    config.limits.check()
    models = _schemas(config.limits)
    ReplyRequest, ScoreRequest, Error = models["ReplyRequest"], models["ScoreRequest"], models["Error"]
    slots = _Slots(config.max_concurrency, config.max_queue)
    state: dict[str, Any] = {"bot": None, "error": None}

    def load() -> None:
        started = time.perf_counter()
        try:
            state["bot"] = load_bot() if load_bot else Bot(config.bundle, config.threads, config.threshold, config.strict)
            LOG.info("ready: %s loaded in %.2f s", config.bundle, time.perf_counter() - started)
        except Exception as error:  # whatever stops the load is reported, and the server stops
            state["error"] = str(error) if isinstance(error, ReplyrankError) else f"{type(error).__name__}: {error}"
            LOG.error("cannot load the bundle: %s", state["error"])
            if not isinstance(error, ReplyrankError):
                LOG.error("%s", traceback.format_exc())
            if on_load_error:
                on_load_error(state["error"])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=load, name="replyrank-load", daemon=True).start()
        yield
        slots.pool.shutdown(wait=True)

    app = FastAPI(
        title="replyrank",
        version=__version__,
        description="Write candidate replies to a comment, score them for realism and upvotes, and pick the best.",
        lifespan=lifespan,
    )
    app.add_middleware(_BodyLimit, max_bytes=config.limits.max_body_bytes)
    app.add_middleware(_AccessLog)  # outermost: it logs the 413s too

    def error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(_error_body(type_, message), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.type, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return error_response(422, "invalid_request", "the body is not valid JSON")
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        # the message names the field and the rule, never echoes the input
        return error_response(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}{more}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 400:  # FastAPI's answer to a body it cannot decode (bytes that are not UTF-8)
            return error_response(422, "invalid_request", "the body is not valid JSON")
        type_ = _STATUS_TYPES.get(error.status_code, "error")
        return error_response(error.status_code, type_, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        LOG.error("internal error on %s %s:\n%s", request.method, request.url.path, traceback.format_exc())
        return error_response(500, "internal", "internal server error (the server's log has the details)")

    bearer = HTTPBearer(auto_error=False, description="The key in the file given to --api-key-file.")
    expected = config.api_key.encode("utf-8") if config.api_key else None

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = credentials.credentials.encode("utf-8", "replace") if credentials else b""
        # constant time: how much of a wrong key matched must not show in the response time
        if expected is None or not hmac.compare_digest(given, expected):
            raise ApiError(401, "unauthorized", "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           {"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorized)] if expected else []

    def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
        described = {
            401: "Missing or wrong API key.", 413: "The request body is too large.", 422: "A limit or an option was refused.",
            429: "Too many requests in progress or queued; see Retry-After.", 503: "The bundle is not loaded yet.",
            504: "The request ran past its deadline; its decode was stopped.",
        }
        return {s: {"model": Error, "description": described[s]} for s in statuses if s != 401 or expected}

    def ready_bot() -> "Bot":
        bot = state["bot"]
        if bot is None:
            message = f"cannot load the bundle: {state['error']}" if state["error"] else "the bundle is still loading"
            raise ApiError(503, "not_ready", message, {"Retry-After": "1"})
        return bot

    async def run(work: Callable[[float], Any]) -> JSONResponse:
        arrived = time.monotonic()
        deadline = arrived + config.timeout_s

        def timed() -> Any:
            if time.monotonic() > deadline:
                raise ApiError(504, "timeout", f"the request waited in the queue past its {config.timeout_s:g} s deadline; retry later")
            return work(deadline)

        try:
            data = await slots.run(timed)
        except DeadlineExceeded as error:
            message = f"the request ran past its {config.timeout_s:g} s deadline ({error}); ask for fewer candidates or tokens"
            raise ApiError(504, "timeout", message) from None
        except InputError as error:
            raise ApiError(422, "invalid_request", str(error)) from None
        total_ms = (time.monotonic() - arrived) * 1e3
        return JSONResponse(data, headers={"Server-Timing": f"total;dur={total_ms:.1f}"})

    @app.get("/health", response_model=models["Status"], tags=["probes"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers. Always public."""
        return {"status": "ok"}

    @app.get("/ready", response_model=models["Status"], responses=documented(503), tags=["probes"])
    async def ready() -> dict[str, str]:
        """Readiness: 200 once the bundle is loaded, 503 before."""
        ready_bot()
        return {"status": "ready"}

    result_schema = json.loads(RESULT_SCHEMA.read_text(encoding="utf-8"))
    result_response = {200: {
        "description": "`Result.to_dict()`, as `replyrank reply --json` / `rank --json` print it (runtime/result.schema.json).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}},
    }}

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with runtime/result.schema.json as the Result component (its $defs beside it)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in result_schema.get("$defs", {}).items():
                components[f"Result.{name}"] = _rebase(definition)
            components["Result"] = _rebase({k: v for k, v in result_schema.items() if k not in ("$schema", "$id", "$defs")})
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/v1/info", response_model=models["Info"], responses=documented(401, 503), dependencies=guarded)
    async def info() -> dict[str, Any]:
        """The bundle, package versions, this server's limits and settings."""
        bot = ready_bot()
        bundle = bot.bundle
        return {
            "bundle": {
                "path": str(bot.path),
                "format_version": bundle.format_version,
                "replyrank_version": bundle.replyrank_version,
                "quantization": bundle.quantization,
                "sources": dict(bundle.sources),
                "realism_threshold": bot.realism_threshold,
                "scores": {"realism": asdict(bundle.discriminator.score), "upvotes": asdict(bundle.upvotes.score)},
                "sampling": {**asdict(bot.sampling), "stop": list(bot.sampling.stop)},
            },
            "versions": _versions(),
            "limits": asdict(config.limits),
            "server": {
                "threads": config.threads, "max_concurrency": config.max_concurrency, "max_queue": config.max_queue,
                "timeout_s": config.timeout_s, "auth": expected is not None, "strict": bot.strict,
                "in_progress": slots.admitted,
            },
        }

    @app.post("/v1/reply", response_model=None, responses={**result_response, **documented(401, 413, 422, 429, 503, 504)},
              dependencies=guarded)
    async def reply(request: ReplyRequest) -> JSONResponse:
        """Write candidate replies, score them and pick the best: what `replyrank reply --json` prints."""
        bot = ready_bot()
        given = request.model_dump(exclude_none=True)
        comment = given.pop("comment")
        if "stop" in given:
            given["stop"] = tuple(given["stop"])
        options = replace(bot.sampling, **given)
        options.check()  # refused here, before it takes a slot

        def work(stop_at: float) -> dict[str, Any]:
            with generate.deadline(stop_at):
                return bot.reply(comment, options).to_dict()

        return await run(work)

    @app.post("/v1/score", response_model=None, responses={**result_response, **documented(401, 413, 422, 429, 503, 504)},
              dependencies=guarded)
    async def score(request: ScoreRequest) -> JSONResponse:
        """Score and rank replies written elsewhere: what `replyrank rank --json` prints."""
        bot = ready_bot()
        comment, replies = request.comment, list(request.replies)
        generate.check_replies(replies)

        def work(stop_at: float) -> dict[str, Any]:
            return bot.score(comment, replies).to_dict()

        return await run(work)

    @app.exception_handler(InputError)
    async def input_error(request: Request, error: InputError) -> JSONResponse:
        return error_response(422, "invalid_request", str(error))

    return app


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan_threads(threads: int | None, max_concurrency: int | None, cores: int) -> tuple[int, int]:
    """Threads per session and requests at once, so that their product never exceeds the cores."""
    if threads is not None and threads < 1 or max_concurrency is not None and max_concurrency < 1:
        raise click.UsageError("--threads and --max-concurrency must be at least 1")
    if threads is None and max_concurrency is None:
        threads, max_concurrency = cores, 1  # one request at a time, with every core: the lowest latency
    elif max_concurrency is None:
        max_concurrency = max(1, cores // threads)
    elif threads is None:
        threads = max(1, cores // max_concurrency)
    if threads * max_concurrency > max(cores, 1):
        raise click.UsageError(
            f"--max-concurrency {max_concurrency} x --threads {threads} would run {threads * max_concurrency} threads "
            f"on {cores} cores; lower one of them"
        )
    return threads, max_concurrency


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _StderrHandler(logging.StreamHandler):
    """Log lines to whatever `sys.stderr` is when they are written (click's test runner swaps it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _serve_command() -> click.Command:
    missing = server_missing()
    if missing:
        message = f"`replyrank serve` needs the server extra ({missing} is missing): {SERVER_EXTRA}"

        # whatever it is given, --help included, it says how to install the extra
        @click.command("serve", help=f"Serve the bot over HTTP (needs the server extra: {SERVER_EXTRA}).", add_help_option=False,
                       context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
        def needs_extra() -> None:
            raise click.ClickException(message)

        return needs_extra

    limits = Limits()

    @click.command("serve")
    @click.option("--bundle", type=click.Path(), default=None, help="Bundle folder (default: $REPLYRANK_BUNDLE, else the default bundle).")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; anything but loopback wants --api-key-file.")
    @click.option("--port", type=int, default=8080, show_default=True, help="Port (0: any free port, logged at startup).")
    @click.option("--api-key-file", type=click.Path(dir_okay=False), default=None, help="File holding the API key clients send as a Bearer token.")
    @click.option("--max-concurrency", type=int, default=None, help="Requests decoding at once (default: cores / threads).")
    @click.option("--max-queue", type=click.IntRange(min=0), default=ServerConfig.max_queue, show_default=True,
                  help="Requests waiting for a slot; more get 429.")
    @click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=ServerConfig.timeout_s,
                  show_default=True, help="Seconds a request may take, queueing included; past it the decode stops and it gets 504.")
    @click.option("--threads", type=int, default=None, help="ONNX Runtime threads per session (default: cores / max-concurrency).")
    @click.option("--threshold", type=float, default=None, help="Realism threshold (default: the bundle's calibrated one).")
    @click.option("--strict", is_flag=True, help="When no candidate reaches the threshold, reply nothing.")
    @click.option("--max-body-bytes", type=int, default=limits.max_body_bytes, show_default=True, help="Larger bodies get 413.")
    @click.option("--max-comment-chars", type=int, default=limits.max_comment_chars, show_default=True)
    @click.option("--max-candidates", type=int, default=limits.max_candidates, show_default=True)
    @click.option("--max-new-tokens", type=int, default=limits.max_new_tokens, show_default=True)
    @click.option("--max-replies", type=int, default=limits.max_replies, show_default=True, help="Replies one /v1/score call ranks.")
    @click.option("--max-reply-chars", type=int, default=limits.max_reply_chars, show_default=True)
    def serve(
        bundle: str | None, host: str, port: int, api_key_file: str | None, max_concurrency: int | None, max_queue: int,
        timeout_s: float, threads: int | None, threshold: float | None, strict: bool, **limit_values: int,
    ) -> None:
        """Serve the bot over HTTP: POST /v1/reply, POST /v1/score, GET /v1/info, /health, /ready, /docs.

        Limits above the library's own (replyrank.generate.MAX_*) are refused. The server stops on
        SIGTERM after the requests in flight are answered.
        """
        import uvicorn

        server_limits = Limits(**limit_values)
        server_limits.check()
        path = Path(bundle) if bundle else default_bundle_dir()
        if not path.exists():
            raise click.ClickException(f"no bundle at {path}: pass --bundle DIR, or build the default one with `replyrank build-default`")
        api_key = None
        if api_key_file:
            try:
                api_key = Path(api_key_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as error:
                raise click.ClickException(f"cannot read the API key file {api_key_file}: {error}") from None
            if not api_key:
                raise click.ClickException(f"the API key file {api_key_file} is empty")
        threads, max_concurrency = plan_threads(threads, max_concurrency, available_cores())
        if not _is_loopback(host) and api_key is None:
            click.echo(f"warning: serving on {host} without --api-key-file: anyone who can reach it can use this server", err=True)

        if not any(isinstance(h, _StderrHandler) for h in LOG.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        LOG.propagate = False

        config = ServerConfig(path, threads, max_concurrency, max_queue, timeout_s, api_key, threshold, strict, server_limits)
        failed: list[str] = []
        holder: list[uvicorn.Server] = []

        def stop(error: str) -> None:
            failed.append(error)
            holder[0].should_exit = True

        app = create_app(config, on_load_error=stop)
        LOG.info("loading %s (threads %d, max concurrency %d, queue %d, timeout %g s, auth %s)",
                 path, threads, max_concurrency, max_queue, timeout_s, "on" if api_key else "off")
        server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, access_log=False, log_level="info", server_header=False,
            timeout_graceful_shutdown=int(math.ceil(timeout_s)) + 5,  # in-flight requests end by their deadline anyway
        ))
        holder.append(server)
        server.run()
        if failed:
            raise click.ClickException(f"cannot load the bundle: {failed[0]}")

    return serve


serve = _serve_command()
