"""Logging for `loramux serve`: loramux's, uvicorn's and vLLM's lines at the chosen level;
everything else third-party (bitsandbytes' "pip install kernels", Triton, torch and transformers
warnings) only with `--log-level debug`, since at start they flood the log with advice a user of
the server cannot act on. Errors always show.

vLLM keeps its own handler (its engine lines, such as the weight-loading one, are the server's
story), minus its advice about Triton and LD_PRELOAD (tcmalloc, iomp). vLLM's engine and worker
processes do not inherit this process's logging, so its plugin hook calls `quiet_engine_logs`
there, with the level passed down in LORAMUX_LOG_LEVEL.
"""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OWN = ("loramux", "uvicorn", "vllm", "__main__")
LEVEL_ENV = "LORAMUX_LOG_LEVEL"  # set by `configure_logging` for vLLM's child processes
ADVICE = ("LD_PRELOAD", "Triton", "triton")  # vLLM's performance advice a server user can't act on


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
