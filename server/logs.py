"""Logging for `loramux serve`: loramux's, uvicorn's and vLLM's lines at the chosen level;
everything else third-party (bitsandbytes' "pip install kernels", Triton, torch and transformers
warnings) only with `--log-level debug`, since at start they flood the log with advice a user of
the server cannot act on. Errors always show.

vLLM keeps its own handler (its engine lines, such as the weight-loading one, are the server's
story), minus its advice about Triton and LD_PRELOAD (tcmalloc, iomp). vLLM's engine and worker
processes do not inherit this process's logging, so its plugin hook calls `quiet_engine_logs`
there, with the level passed down in LORAMUX_LOG_LEVEL.

The access log is loramux's own (`loramux.access`, `AccessLog`), one line per request, in place
of uvicorn's: it also records which adapter digest answered (the `x-loramux-adapter-digest`
header), so an operator can prove from the log which weights produced a response.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from loramux.wire import DIGEST_HEADER, REF_HEADER

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OWN = ("loramux", "uvicorn", "vllm", "__main__")
LEVEL_ENV = "LORAMUX_LOG_LEVEL"  # set by `configure_logging` for vLLM's child processes
ADVICE = ("LD_PRELOAD", "Triton", "triton")  # vLLM's performance advice a server user can't act on
ACCESS = logging.getLogger("loramux.access")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]


class _ThirdPartyToDebug(logging.Filter):
    """Shows a third-party record only when the root level admits debug, or it is an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or record.name.startswith(OWN):
            return True
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def configure_logging(level: str) -> None:
    """Root handler at `level`, third-party noise demoted; Python warnings go through logging."""
    logging.basicConfig(level=level.upper(), format=FORMAT, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ThirdPartyToDebug())
    logging.captureWarnings(True)  # `warnings.warn` from torch & co. becomes "py.warnings"
    # uvicorn sets its access logger's level itself when it starts; a filter survives that.
    logging.getLogger("uvicorn.access").addFilter(_Replaced())
    os.environ[LEVEL_ENV] = level.lower()
    quiet_engine_logs()


class _AdviceToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not any(
            word in record.getMessage() for word in ADVICE)


def quiet_engine_logs() -> None:
    """In any process running vLLM: drop its Triton/LD_PRELOAD advice and third-party warnings
    (bitsandbytes' "pip install kernels") below error, unless the server runs at debug."""
    if os.environ.get(LEVEL_ENV, "info") == "debug":
        return
    for handler in logging.getLogger("vllm").handlers:
        handler.addFilter(_AdviceToDebug())
    for name in ("bitsandbytes", "triton", "torch._inductor"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _Replaced(logging.Filter):
    """uvicorn's access lines: replaced by `AccessLog`'s, which carry the adapter digest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


class AccessLog:
    """ASGI middleware: one `loramux.access` line per HTTP request once its response ends (a
    stream's at its last event): client, method, path, status, seconds, and the adapter ref and
    digest from the response's provenance headers (`-` where a response has none)."""

    def __init__(self, app: ASGIApp,
                 headers: tuple[str, str] = (REF_HEADER, DIGEST_HEADER)) -> None:
        self.app = app
        self._headers = tuple(h.encode() for h in headers)

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": 500}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() in self._headers:
                        seen[name.lower()] = value.decode("latin-1")
            await send(message)

        state = scope.setdefault("state", {})  # the auth dependency writes the key's name here
        try:
            await self.app(scope, receive, watch)
        finally:
            client = scope.get("client") or ("-", 0)
            ref, digest = (seen.get(h, "-") for h in self._headers)
            ACCESS.info('%s:%s "%s %s" %s %.3fs key=%s adapter=%s digest=%s', client[0],
                        client[1], scope.get("method"), scope.get("path"), seen["status"],
                        time.perf_counter() - started, state.get("key", "-"), ref, digest)
