"""The ASGI app of `replyrank serve`: five endpoints, each a function of one `ServerState` (the
config, the loaded bot, readiness, admission); the handlers that give every error the JSON shape of
`replyrank.api`; and the access log.

- `GET /health` is liveness and always public; `GET /ready` answers 503 until the bundle is loaded
  (it loads in a background thread, so the process answers probes at once);
- `GET /v1/info`: the bundle, package versions, this server's limits and settings;
- `POST /v1/reply` and `POST /v1/score` answer exactly what `replyrank reply --json` and
  `replyrank rank --json` print; their work runs through `replyrank.admission`. A ranking bundle
  (no generator) answers `/v1/reply` with 501, in the same JSON error shape.

FastAPI is imported at the top: only `replyrank serve` imports this module, once it has checked that
the `[server]` extra is installed. (No `from __future__ import annotations`: FastAPI reads the
dependencies' annotations at run time.)
"""

import hmac
import inspect
import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from . import __version__
from .admission import Admission, BodyLimit
from .api import ERROR_DESCRIPTIONS, STATUS_TYPES, ApiError, Models, ServerConfig, error_body, request_models, with_result_schema
from .bot import RESULT_SCHEMA, Bot
from .environment import package_versions
from .errors import InputError, RankingOnly, ReplyrankError
from .options import check_replies

LOG = logging.getLogger("replyrank.serve")
# the packages whose versions /v1/info reports
VERSIONED = ("replyrank", "onnxruntime", "tokenizers", "numpy", "fastapi", "uvicorn", "pydantic")


@dataclass
class ServerState:
    """What the endpoints share: the config, this server's models and admission, and the bot once it
    has loaded (or why it could not)."""

    config: ServerConfig
    models: Models
    admission: Admission
    bot: Bot | None = None
    load_error: str | None = None

    def ready_bot(self) -> Bot:
        """The loaded bot, else 503: the bundle is still loading, or could not load."""
        if self.bot is None:
            message = f"cannot load the bundle: {self.load_error}" if self.load_error else "the bundle is still loading"
            raise ApiError(503, "not_ready", message, {"Retry-After": "1"})
        return self.bot


def create_app(config: ServerConfig, on_load_error: Callable[[str], None] | None = None) -> FastAPI:
    """The ASGI app. The bot is loaded in a background thread at startup; until it is, `/ready` and
    the `/v1` routes answer 503. `on_load_error(message)` is called if it cannot load."""
    config.limits.check()
    state = ServerState(config, request_models(config.limits), Admission(config.max_concurrency, config.max_queue, config.timeout_s))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=_load, args=(state, on_load_error), name="replyrank-load", daemon=True).start()
        yield
        state.admission.shutdown()  # the requests in flight finish first

    app = FastAPI(
        title="replyrank",
        version=__version__,
        description="Write candidate replies to a comment, score them for realism and upvotes, and pick the best.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=config.limits.max_body_bytes)
    app.add_middleware(AccessLog)  # outermost: it logs the 413s too
    for error, handler in ((ApiError, api_error), (RequestValidationError, invalid_request), (HTTPException, http_error),
                           (Exception, internal_error), (InputError, input_error), (RankingOnly, ranking_only)):
        app.add_exception_handler(error, handler)
    _add_routes(app, state)
    app.openapi = lambda: _openapi(app)  # FastAPI's way to extend its schema
    return app


def _load(state: ServerState, on_load_error: Callable[[str], None] | None) -> None:
    config, started = state.config, time.perf_counter()
    try:
        state.bot = Bot(config.bundle, config.threads, config.threshold, config.strict)
        LOG.info("ready: %s loaded in %.2f s", config.bundle, time.perf_counter() - started)
    except Exception as error:  # whatever stops the load is reported, and the server stops
        state.load_error = str(error) if isinstance(error, ReplyrankError) else f"{type(error).__name__}: {error}"
        LOG.error("cannot load the bundle: %s", state.load_error)
        if not isinstance(error, ReplyrankError):
            LOG.error("%s", traceback.format_exc())
        if on_load_error:
            on_load_error(state.load_error)


# ---------------------------------------------------------------- endpoints


async def health(state: ServerState) -> dict[str, str]:
    """Liveness: the process answers. Always public."""
    return {"status": "ok"}


async def ready(state: ServerState) -> dict[str, str]:
    """Readiness: 200 once the bundle is loaded, 503 before."""
    state.ready_bot()
    return {"status": "ready"}


async def info(state: ServerState) -> dict[str, Any]:
    """The bundle, package versions, this server's limits and settings."""
    bot, config = state.ready_bot(), state.config
    bundle = bot.bundle
    versions = {name: version or "unknown" for name, version in package_versions(VERSIONED).items()}
    return {
        "bundle": {
            "path": str(bot.path),
            "format_version": bundle.format_version,
            "replyrank_version": bundle.replyrank_version,
            "quantization": bundle.quantization,
            "sources": dict(bundle.sources),
            "realism_threshold": bot.realism_threshold,
            "scores": {spec.score.name: asdict(spec.score) for spec in bundle.scorers.values()},
            "ranking_only": bot.ranking_only,  # True: /v1/reply answers 501
            "sampling": None if bot.ranking_only else {**asdict(bot.sampling), "stop": list(bot.sampling.stop)},
        },
        "versions": {**versions, "python": sys.version.split()[0]},
        "limits": asdict(config.limits),
        "server": {
            "threads": config.threads, "max_concurrency": config.max_concurrency, "max_queue": config.max_queue,
            "timeout_s": config.timeout_s, "auth": bool(config.api_key), "strict": bot.strict,
            "in_progress": state.admission.admitted,
        },
    }


async def reply(state: ServerState, request: BaseModel) -> JSONResponse:
    """Write candidate replies, score them and pick the best: what `replyrank reply --json` prints."""
    bot = state.ready_bot()
    if bot.ranking_only:
        raise RankingOnly(f"the bundle {bot.path.name} only ranks (it has no generator): POST /v1/score ranks replies written elsewhere")
    given = request.model_dump(exclude_none=True)
    comment = given.pop("comment")
    if "stop" in given:
        given["stop"] = tuple(given["stop"])
    options = replace(bot.sampling, **given)
    options.check()  # refused here, before it takes a slot
    return await _answer(state, lambda: bot.reply(comment, options).to_dict())


async def score(state: ServerState, request: BaseModel) -> JSONResponse:
    """Score and rank replies written elsewhere: what `replyrank rank --json` prints."""
    bot = state.ready_bot()
    given = request.model_dump()
    comment, replies = given["comment"], given["replies"]
    check_replies(replies)
    return await _answer(state, lambda: bot.score(comment, replies).to_dict())


async def _answer(state: ServerState, work: Callable[[], dict[str, Any]]) -> JSONResponse:
    """`work()` once admitted, as JSON, with the time from arrival in `Server-Timing`."""
    arrived = time.monotonic()
    data = await state.admission.run(work)
    total_ms = (time.monotonic() - arrived) * 1e3
    return JSONResponse(data, headers={"Server-Timing": f"total;dur={total_ms:.1f}"})


class ApiKey:
    """A dependency that answers 401 unless the request sends `Authorization: Bearer KEY`."""

    scheme = HTTPBearer(auto_error=False, description="The key in the file given to --api-key-file.")

    def __init__(self, key: str):
        self.expected = key.encode("utf-8")

    def __call__(self, credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        given = credentials.credentials.encode("utf-8", "replace") if credentials else b""
        # constant time: how much of a wrong key matched must not show in the response time
        if not hmac.compare_digest(given, self.expected):
            raise ApiError(401, "unauthorized", "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           {"WWW-Authenticate": "Bearer"})


def _add_routes(app: FastAPI, state: ServerState) -> None:
    models, key = state.models, state.config.api_key
    guarded = [Depends(ApiKey(key))] if key else []

    def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
        return {s: {"model": models.error, "description": ERROR_DESCRIPTIONS[s]} for s in statuses if s != 401 or key}

    result = {200: {
        "description": "`Result.to_dict()`, as `replyrank reply --json` / `rank --json` print it (runtime/result.schema.json).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}},
    }}
    app.add_api_route("/health", _endpoint(health, state), response_model=models.status, tags=["probes"])
    app.add_api_route("/ready", _endpoint(ready, state), response_model=models.status, responses=documented(503), tags=["probes"])
    app.add_api_route("/v1/info", _endpoint(info, state), response_model=models.info, responses=documented(401, 503), dependencies=guarded)
    for path, handler, body, refusals in (("/v1/reply", reply, models.reply_request, (501,)), ("/v1/score", score, models.score_request, ())):
        app.add_api_route(path, _endpoint(handler, state, body), methods=["POST"], response_model=None,
                          responses={**result, **documented(401, 413, 422, 429, *refusals, 503, 504)}, dependencies=guarded)


def _endpoint(handler: Callable[..., Awaitable[Any]], state: ServerState, body: type | None = None) -> Callable[..., Awaitable[Any]]:
    """`handler` with `state` given, as FastAPI takes an endpoint.

    FastAPI reads what to parse from the endpoint's signature, so it is written here: one body
    parameter typed with this server's model (whose schema carries this server's limits) for a
    handler that takes a request, none otherwise. The handler's name and docstring name and describe
    the operation in the OpenAPI schema.
    """

    async def endpoint(**given: Any) -> Any:
        return await handler(state, **given)

    parameters = [inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=body)] if body else []
    setattr(endpoint, "__signature__", inspect.Signature(parameters))
    endpoint.__name__, endpoint.__qualname__, endpoint.__doc__ = handler.__name__, handler.__qualname__, handler.__doc__
    return endpoint


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with runtime/result.schema.json as the Result component (its $defs beside it)."""
    if app.openapi_schema is None:
        result_schema = json.loads(RESULT_SCHEMA.read_text(encoding="utf-8"))
        app.openapi_schema = with_result_schema(FastAPI.openapi(app), result_schema)
    return app.openapi_schema


# ---------------------------------------------------------------- errors and the access log


def _error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(type_, message), status_code=status, headers=headers)


async def api_error(request: Request, error: ApiError) -> JSONResponse:
    return _error_response(error.status, error.type, error.message, error.headers)


async def input_error(request: Request, error: InputError) -> JSONResponse:
    return _error_response(422, "invalid_request", str(error))


async def ranking_only(request: Request, error: RankingOnly) -> JSONResponse:
    return _error_response(501, "not_implemented", str(error))


async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = error.errors()
    first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return _error_response(422, "invalid_request", "the body is not valid JSON")
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    # the message names the field and the rule, never echoes the input
    return _error_response(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}{more}")


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    if error.status_code == 400:  # FastAPI's answer to a body it cannot decode (bytes that are not UTF-8)
        return _error_response(422, "invalid_request", "the body is not valid JSON")
    type_ = STATUS_TYPES.get(error.status_code, "error")
    return _error_response(error.status_code, type_, str(error.detail), getattr(error, "headers", None))


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    LOG.error("internal error on %s %s:\n%s", request.method, request.url.path, traceback.format_exc())
    return _error_response(500, "internal", "internal server error (the server's log has the details)")


class AccessLog:
    """ASGI middleware: one line per request on stderr: client, method, path, status, milliseconds."""

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
