"""Without servers: a side that fails gets no ratio, and the report says so."""

from __future__ import annotations

import json
from pathlib import Path

from loramux.bench import report, runner
from loramux.bench.loadgen import LoadResult, percentile


def _trial(tokens_per_s: float, failures: int = 0) -> LoadResult:
    return LoadResult(requests=4, concurrency=32, wall_s=1.0, output_tokens=int(tokens_per_s),
                      failures=failures, first_error="a1: HTTP 500: boom" if failures else None,
                      ttft_s=[0.1, 0.2], latency_s=[1.0, 1.0])


def test_failed_side_has_no_ratio_and_is_reported(tmp_path: Path) -> None:
    cfg = runner.BenchConfig.preset(quick=True)
    lmx = runner._Side("loramux", server=None)
    vllm = runner._Side("vllm", server=None)
    trials = {"loramux": {k: [_trial(100), _trial(110)] for k in cfg.ks},
              "vllm": {k: [_trial(90), _trial(95)] for k in cfg.ks}, "naive": {}}
    trials["vllm"][1] = [_trial(90), _trial(0, failures=3)]
    serve = runner._serve_summary(cfg, trials, lmx, vllm)
    assert serve["per_k"]["0"]["ratio_loramux_over_vllm"]["median"] > 1
    failed = serve["per_k"]["1"]
    assert failed["ratio_loramux_over_vllm"] is None
    assert "3 request(s) failed" in failed["ratio_error"] and "HTTP 500" in failed["ratio_error"]
    assert serve["multi_lora_overhead"]["1"]["vllm"] is None

    results = {"timestamp": "20260101T000000Z", "quick": True, "command": "test",
               "config": {}, "machine": {}, "gateway": {"none": {"serve": serve}}}
    results["errors"] = runner.collect_errors(results)
    assert any("HTTP 500" in e for e in results["errors"])
    path = report.write(results, tmp_path, show=False)
    markdown = path.with_suffix(".md").read_text()
    assert "| 1 | 105.0 (100.0-110.0) | FAILED | n/a (failed) |" in markdown
    assert "## Failures" in markdown
    assert json.loads(path.read_text())["errors"] == results["errors"]


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0], 99) == 1.99
