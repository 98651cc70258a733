"""`loramux bench all --quick` runs end to end and writes its files (a smoke test: no figure and
no speed is asserted, only that every part ran on every server and was reported)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_quick_run_writes_json_markdown_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "loramux.bench.cli", "all", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=1500)  # 2-4 min; 15 on a busy 2-core box
    tail = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    found = sorted(out.glob("*.json"))
    assert len(found) == 1, tail
    results = json.loads(found[0].read_text())
    for suffix in (".md", ".png"):
        assert found[0].with_suffix(suffix).stat().st_size > 0, tail
    assert found[0].with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert results["quick"] is True
    assert {"cpu_model", "cores", "memory_gib", "versions"} <= results["machine"].keys()
    assert {"torch", "peft", "transformers"} <= results["machine"]["versions"].keys()
    (gateway,) = results["gateway"].values()
    # Every part ran on every side, with figures and ratios: the harness's and the components'
    # (registry, trainer) alike; a peer that is not installed is a skip, never an error.
    assert results["errors"] == [], tail
    rows = gateway["serve"]["mixes"]
    assert set(rows) == {"base", "1", "4", "zipf", "mixed", "rank16"}
    for key, row in rows.items():
        assert row["loramux"]["ok"] and row["vllm"]["ok"], (key, tail)
        assert row["ratio_loramux_over_vllm"]["median"] > 0
    assert set(gateway["serve"]["ratio_to_base"]) == {"1", "4", "zipf"}
    assert all(r["loramux"]["median"] > 0 and r["vllm"]["median"] > 0
               for r in gateway["serve"]["ratio_to_base"].values())
    assert gateway["serve"]["mixed_over_rank16"]["loramux"]["median"] > 0
    for side in ("loramux", "vllm"):
        assert rows["zipf"][side]["tail_ttft_p99_ms"]["median"] > 0
    # Same slots on both servers: loramux's default (one per resident adapter on CPU), which
    # vLLM's server is given explicitly.
    slots = gateway["serve"]["slots"]
    assert slots["loramux_effective_max_loras"] == slots["vllm_max_loras"] == 4, slots
    assert slots["loramux_max_loras_flag"] is None
    for side in ("loramux", "vllm"):
        swap = gateway["swap"][side]
        assert swap["ok"] and swap["cold_ttft_ms"]["n"] >= 1, (side, tail)
    assert gateway["reload"]["ratio_reload_over_cold_swap"] > 0
    for row in gateway["naive"]["per_k"].values():
        assert row["naive"]["ok"] and row["ratio_loramux_over_naive"]["median"] > 0
    # One compute dtype for every server and loop, recorded.
    assert results["dtype"] in ("bfloat16", "float32")
    assert gateway["limits"]["dtype"] == results["dtype"]
    assert results["machine"]["bf16_instructions"] == (results["dtype"] == "bfloat16")
    # The real base at its quick size: both servers, base and K = 8, GQA-shaped adapters.
    real = results["real"]
    assert real["dtype"] == results["dtype"] == real["limits"]["dtype"], tail
    assert real["workload"]["adapter_modules"]["k_proj"] == [576, 192]
    real_rows = real["serve"]["mixes"]
    assert set(real_rows) == {"base", "8"}, tail
    for key, row in real_rows.items():
        assert row["loramux"]["ok"] and row["vllm"]["ok"], (key, tail)
        assert row["ratio_loramux_over_vllm"]["median"] > 0
    assert all(r["median"] > 0 for r in real["serve"]["ratio_to_base"]["8"].values())
    for key in ("registry", "trainer"):
        component = results["components"][key]
        assert component["ok"] and component["result"], (key, component.get("error"), tail)

    # Where the run's time went: both servers' load trials and starts are counted.
    spent = results["time_s"]
    for phase in ("load trials, loramux", "load trials, vllm", "server starts",
                  "warm-up requests", "hot swap", "load trials, naive", "trainer benchmark",
                  "load trials, loramux (real base)", "load trials, vllm (real base)"):
        assert spent.get(phase, 0) > 0, (phase, spent)

    markdown = found[0].with_suffix(".md").read_text()
    for title in ("1. loramux vs vLLM", "2. Many adapters", "2b. TTFT p50 / p99",
                  "2c. Mixed ranks", "3. Hot swap vs reload", "4. Naive", "R. Real base",
                  "5. Registry and trainer", f"compute dtype {results['dtype']}"):
        assert title in markdown
    assert "load trials, vllm" in markdown
    assert "loramux/vLLM" in proc.stdout  # the table is printed too
    assert proc.returncode == (1 if results["errors"] else 0), tail
