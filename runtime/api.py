"""The contract of `replyrank serve` as its clients see it: the limits a server enforces, the request
and response models (with those limits in their schema), the one JSON shape of every error, and the
OpenAPI component that points at `runtime/result.schema.json`.

Pydantic comes with the `[server]` extra, so it is imported inside `request_models` only: the
command's flags read `Limits` and `ServerConfig` without the extra installed. (No `from __future__
import annotations` here: pydantic reads the models' annotations, which name local variables.)
"""

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import options
from .errors import InputError


@dataclass(frozen=True)
class Limits:
    """The most one request may ask for. The defaults are the library's own limits
    (`replyrank.options.MAX_*`, which `Bot` enforces too); a server may only lower them."""

    max_body_bytes: int = 1 << 20  # 413 above this; 64 replies of 10,000 characters fit
    max_comment_chars: int = options.MAX_COMMENT_CHARS
    max_candidates: int = options.MAX_CANDIDATES
    max_new_tokens: int = options.MAX_NEW_TOKENS
    max_replies: int = options.MAX_REPLIES
    max_reply_chars: int = options.MAX_REPLY_CHARS

    def check(self) -> None:
        ceilings = {f.name: getattr(options, f.name.upper(), None) for f in fields(self)}
        for name, value in asdict(self).items():
            ceiling = ceilings[name]
            if value < 1 or (ceiling is not None and value > ceiling):
                bound = f"between 1 and {ceiling} (the library's limit)" if ceiling is not None else "at least 1"
                raise InputError(f"--{name.replace('_', '-')} must be {bound}, got {value}")


@dataclass(frozen=True)
class ServerConfig:
    """Everything `replyrank.endpoints.create_app` needs; `replyrank serve` fills it from its flags."""

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


# the `type` of an error the framework raises, by its status
STATUS_TYPES = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid_request", 429: "overloaded", 501: "not_implemented", 503: "not_ready", 504: "timeout",
}

# what each error status means, as the OpenAPI schema documents it
ERROR_DESCRIPTIONS = {
    401: "Missing or wrong API key.", 413: "The request body is too large.", 422: "A limit or an option was refused.",
    429: "Too many requests in progress or queued; see Retry-After.",
    501: "The bundle only ranks: it has no generator to write replies with (POST /v1/score ranks).", 503: "The bundle is not loaded yet.",
    504: "The request ran past its deadline; its decode was stopped.",
}


def error_body(type_: str, message: str) -> dict[str, str]:
    """The JSON body of every error: `{"error", "type"}`, never a traceback."""
    return {"error": message, "type": type_}


@dataclass(frozen=True)
class Models:
    """The pydantic models of one server: requests carry its limits, so its OpenAPI schema shows them."""

    reply_request: type
    score_request: type
    error: type
    status: type
    info: type


def request_models(limits: Limits) -> Models:
    """The request and response models, with these limits written into their schema."""
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
        stop: option(list[Annotated[str, Field(min_length=1)]], max_length=options.MAX_STOP_STRINGS,
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

    return Models(ReplyRequest, ScoreRequest, Error, Status, Info)


def with_result_schema(schema: dict[str, Any], result_schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI schema with `result_schema` as its `Result` component and each of its $defs as `Result.X`."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in result_schema.get("$defs", {}).items():
        components[f"Result.{name}"] = _rebase(definition)
    components["Result"] = _rebase({k: v for k, v in result_schema.items() if k not in ("$schema", "$id", "$defs")})
    return schema


def _rebase(schema: Any) -> Any:
    """A JSON Schema fragment with `#/$defs/X` references pointed at OpenAPI's `Result.X` components."""
    if isinstance(schema, dict):
        return {k: (v.replace("#/$defs/", "#/components/schemas/Result.") if k == "$ref" else _rebase(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rebase(item) for item in schema]
    return schema
