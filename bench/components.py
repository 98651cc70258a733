"""Part 5: the registry's and the trainer's own benchmarks, in this run's report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from loramux.bench.sides import Reporter

log = logging.getLogger(__name__)


def _registry(quick: bool, dtype: str | None) -> dict[str, Any]:
    from loramux.bench import registry_bench  # here: `loramux --help` needs none of it

    return registry_bench.run(quick=quick, show=False)


def _trainer(quick: bool, dtype: str | None) -> dict[str, Any]:
    from loramux.bench import trainer_bench

    return trainer_bench.run(quick=quick, dtype=dtype)


# (quick, compute dtype of the run: None = this machine's fast one) -> figures
BENCHES: dict[str, Callable[[bool, str | None], dict[str, Any]]] = {
    "registry": _registry, "trainer": _trainer}


def call(key: str, quick: bool, dtype: str | None = None) -> dict[str, Any]:
    """One component benchmark; a failure is recorded, not raised (the rest still runs)."""
    started = time.monotonic()
    try:
        result = BENCHES[key](quick, dtype)
    except Exception as exc:
        log.exception("the %s benchmark failed", key)
        return {"available": True, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"available": True, "ok": True, "seconds": round(time.monotonic() - started, 1),
            "result": result}


def components_part(quick: bool, rep: Reporter, live: bool = True,
                    dtype: str | None = None) -> dict[str, Any]:
    """`live=False` prints plain lines (for a background thread: rich allows one live display
    at a time)."""
    out = {}
    for key in BENCHES:
        message = f"part 5: the {key} benchmark (quick={quick})"
        with rep.phase(f"{key} benchmark"):
            if live:
                with rep.status(message):
                    out[key] = call(key, quick, dtype)
            else:
                rep.line(message + " (in the background)")
                out[key] = call(key, quick, dtype)
        r = out[key]
        rep.line(f"  {key}: " + (f"done in {r['seconds']}s" if r.get("ok")
                                 else f"[red]FAILED {r['error']}[/red]"))
    return out
