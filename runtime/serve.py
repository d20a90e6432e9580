"""`replyrank serve`: one loaded bot behind an HTTP API, for apps that are not written in Python.

It does what the inference servers people already run do (text-embeddings-inference, llama.cpp's
server), in three modules besides this command:

- `replyrank.endpoints`, the app: `/health` (liveness, always public), `/ready` (503 until the
  bundle, loading in the background, is loaded), `/v1/info`, and `POST /v1/reply` and
  `POST /v1/score`, which answer exactly what `replyrank reply --json` and `rank --json` print;
- `replyrank.admission`: the body's size (413), a bounded queue that answers 429 with
  `Retry-After` instead of growing, and a deadline per request that stops its decode (504);
- `replyrank.api`: the limits (422 above them), the request models and the one error shape,
  a JSON `{"error", "type"}`, never a traceback.

One `Bot` is shared: its ONNX Runtime sessions are thread-safe, so concurrency is bounded rather
than the model copied, with `max_concurrency x threads` never above the cores (`plan_threads`). An
optional API key is sent as `Authorization: Bearer KEY` and compared in constant time. The server
binds 127.0.0.1 by default, and warns when bound elsewhere without a key; SIGTERM stops accepting,
lets the requests in flight finish, then exits (uvicorn's graceful shutdown); one access-log line
per request goes to stderr.

FastAPI and uvicorn come with the `[server]` extra and are imported only when the command runs, so
`import replyrank` and the other commands stay light.
"""

import ipaddress
import logging
import math
import sys
from pathlib import Path
from typing import Any

import click

from .api import Limits, ServerConfig
from .locations import ranking_bundle_dir
from .environment import available_cores, missing_package

SERVER_EXTRA = "pip install 'replyrank[server]'"
SERVER_PACKAGES = ("fastapi", "uvicorn")


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


def _read_api_key(api_key_file: str) -> str:
    try:
        api_key = Path(api_key_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise click.ClickException(f"cannot read the API key file {api_key_file}: {error}") from None
    if not api_key:
        raise click.ClickException(f"the API key file {api_key_file} is empty")
    return api_key


def _log_to_stderr(log: logging.Logger) -> None:
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _run(config: ServerConfig, host: str, port: int) -> None:
    """Serve until SIGTERM (or a bundle that cannot load, which is raised as a ClickException)."""
    import uvicorn

    from .endpoints import LOG, create_app

    _log_to_stderr(LOG)
    failed: list[str] = []
    holder: list[uvicorn.Server] = []

    def stop(error: str) -> None:
        failed.append(error)
        holder[0].should_exit = True

    app = create_app(config, on_load_error=stop)
    LOG.info("loading %s (threads %d, max concurrency %d, queue %d, timeout %g s, auth %s)",
             config.bundle, config.threads, config.max_concurrency, config.max_queue, config.timeout_s, "on" if config.api_key else "off")
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, access_log=False, log_level="info", server_header=False,
        timeout_graceful_shutdown=int(math.ceil(config.timeout_s)) + 5,  # in-flight requests end by their deadline anyway
    ))
    holder.append(server)
    server.run()
    if failed:
        raise click.ClickException(f"cannot load the bundle: {failed[0]}")


def _serve_command() -> click.Command:
    missing = missing_package(SERVER_PACKAGES)
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
    @click.option("--bundle", type=click.Path(), default=None,
                  help="Bundle folder (default: $REPLYRANK_BUNDLE, else the default bundle, else the default ranking bundle).")
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
        server_limits = Limits(**limit_values)
        server_limits.check()
        path = Path(bundle) if bundle else ranking_bundle_dir()  # the default bundle where it is built, else the ranking one
        if not path.exists():
            raise click.ClickException(f"no bundle at {path}: pass --bundle DIR, or build the default one with `replyrank build-default` "
                                       "(`--rank-only`: the scorers alone, for /v1/score)")
        api_key = _read_api_key(api_key_file) if api_key_file else None
        threads, max_concurrency = plan_threads(threads, max_concurrency, available_cores())
        if not _is_loopback(host) and api_key is None:
            click.echo(f"warning: serving on {host} without --api-key-file: anyone who can reach it can use this server", err=True)
        _run(ServerConfig(path, threads, max_concurrency, max_queue, timeout_s, api_key, threshold, strict, server_limits), host, port)

    return serve


serve = _serve_command()
