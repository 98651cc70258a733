"""``loramux bench soak --minutes N``: the soak test's long variant, RSS over time reported.

The same load as ``tests/server/test_soak.py`` (``loramux.support.soak``): twice the server's
admission limit, back to back, over the demo base and three random adapters, some streams cut
mid-way. Minutes rather than the test's seconds show a slow leak that a short run hides. Writes
``bench/results/soak/<UTC time>.{json,png}`` and prints the RSS table and the verdicts the test
asserts (RSS growth after warm-up at most 5 %, 429s and no 5xx, nothing in flight at the end).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from loramux.bench.runner import RESULTS_DIR
from loramux.support.soak import SoakResult, soak, soak_server

MAX_GROWTH = 0.05


def verdicts(result: SoakResult) -> dict[str, bool]:
    statuses = result.statuses
    return {
        "rss_growth_at_most_5pct": result.rss_growth <= MAX_GROWTH,
        "some_429": statuses[429] > 0,
        "no_5xx_or_transport_errors": not [s for s in statuses
                                           if s == "error" or int(s) >= 500],
        "nothing_in_flight_after": result.in_flight_after == 0 and result.leases_after == 0,
    }


def run(minutes: float, engine: str = "transformers", admission: int = 4,
        out_dir: Path = RESULTS_DIR) -> dict[str, Any]:
    from loramux.demo.base_model import build
    from loramux.demo.paths import default_base

    base = build(default_base()).path
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="loramux-soak-") as scratch:
        server, models = soak_server(base, Path(scratch), admission, engine=engine)
        url = server.start()
        try:
            result = soak(url, models, clients=2 * admission, seconds=minutes * 60,
                          pid=server.proc.pid)
        finally:
            server.stop()
    start, end = result.rss_after_warmup()
    report = {
        "engine": engine, "minutes": minutes, "admission": admission,
        "clients": result.clients, "requests": result.requests,
        "statuses": {str(k): v for k, v in result.statuses.items()},
        "rss_after_warmup_mib": round(start / 2**20, 1), "rss_end_mib": round(end / 2**20, 1),
        "rss_growth": round(result.rss_growth, 4), "verdicts": verdicts(result),
        "samples": [[round(s.seconds, 1), s.rss_bytes, s.requests] for s in result.samples],
    }
    out_dir = out_dir / "soak"  # apart from the main runs, which `bench show` lists
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stamp}.json").write_text(json.dumps(report, indent=2))
    plot(result, out_dir / f"{stamp}.png")
    report["table"] = result.table()
    return report


def plot(result: SoakResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([s.seconds / 60 for s in result.samples],
            [s.rss_bytes / 2**20 for s in result.samples])
    ax.axvline(result.warmup_s / 60, linestyle="--", color="grey", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title(f"soak: {result.clients} clients, {result.requests} requests")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
