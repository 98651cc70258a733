"""Logging for `loramux serve`: loramux's, uvicorn's and vLLM's lines at the chosen level;
everything else third-party (bitsandbytes' "pip install kernels", Triton, torch and transformers
warnings) only with `--log-level debug`, since at start they flood the log with advice a user of
the server cannot act on. Errors always show.

vLLM keeps its own handler (its engine lines, such as the weight-loading one, are the server's
story); the engine-core process is forked from this one, so it inherits this setup too.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OWN = ("loramux", "uvicorn", "vllm", "__main__")


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
