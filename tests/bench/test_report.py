"""Without servers: the mixes, the least-popular set, and a report in which a side failed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from loramux.bench import mixes, report, runner, serve
from loramux.bench.config import BenchConfig
from loramux.bench.loadgen import LoadResult, percentile
from loramux.bench.workload import Workload


def _trial(tokens_per_s: float, failures: int = 0, models: tuple[str, ...] = ("a1", "a2"),
           ttft: tuple[float, ...] = (0.1, 0.2)) -> LoadResult:
    return LoadResult(requests=4, concurrency=32, wall_s=1.0, output_tokens=int(tokens_per_s),
                      failures=failures, first_error="a1: HTTP 500: boom" if failures else None,
                      ttft_s=list(ttft), latency_s=[1.0, 1.0], models=list(models))


def _workload(n: int = 64) -> Workload:
    names = [f"a{i:03d}" for i in range(n)]
    return Workload(model_dir=Path("m"), parameters=1, served_name="base",
                    adapters={a: Path(a) for a in names}, cold_adapters={},
                    mixed_adapters={f"r{r}-{i}": Path("x") for i in range(2) for r in (8, 16, 64)},
                    registry_dir=Path("r"), scratch=Path("s"))


def test_mixes_give_each_server_the_same_requests_and_the_asked_shape() -> None:
    cfg = BenchConfig(adapters=64, requests=64, mixed_per_rank=2, mixed_requests=12)
    wl = _workload()
    for mix in (*mixes.sweep(cfg), mixes.zipf(cfg), *mixes.ranks(cfg)):
        assert mixes.models_for(wl, cfg, mix, 0) == mixes.models_for(wl, cfg, mix, 0)
    k8 = mixes.models_for(wl, cfg, mixes.Mix("8", "uniform", 8, 64), 0)
    assert len(set(k8)) == 8 and set(Counter(k8).values()) == {8}
    assert mixes.models_for(wl, cfg, mixes.Mix("8", "uniform", 8, 64), 1) != k8
    # Zipf: the most popular adapter (fixed for the run) dominates; the tail is long.
    draws = [m for t in range(20) for m in mixes.models_for(wl, cfg, mixes.zipf(cfg), t)]
    top = mixes.popularity(wl, cfg)[0]
    counts = Counter(draws)
    assert counts.most_common(1)[0][0] == top
    assert counts[top] / len(draws) > 0.15 and len(counts) > 32
    # The mixed batch and its rank-16 twin: same pattern, ranks 8/16/64 vs rank-16 adapters.
    mixed, twin = (mixes.models_for(wl, cfg, m, 0) for m in mixes.ranks(cfg))
    assert {m.split("-")[0] for m in mixed} == {"r8", "r16", "r64"}
    assert set(twin) <= set(wl.names[:6]) and len(set(twin)) == 6
    mapping = dict(zip(mixed, twin, strict=True))
    assert len(set(mapping.values())) == len(mapping) == 6


def test_least_popular_is_the_rarest_tenth_with_ties_to_the_less_popular() -> None:
    models = ["a"] * 10 + ["b"] * 5 + ["c", "d", "e", "f", "g", "h", "i", "j", "k", "l"]
    order = ["a", "b", "l", "k", "j", "i", "h", "g", "f", "e", "d", "c"]  # c least popular
    assert mixes.least_popular(models, order) == {"c", "d"}  # ceil(12 / 10) = 2
    assert mixes.least_popular(["x"] * 3) == {"x"}
    assert mixes.least_popular([]) == set()
    trial = _trial(100, models=("a", "c", "c"), ttft=(0.1, 0.5, 0.7))
    summary = trial.summary({"c"})
    assert summary["tail_requests"] == 2 and summary["tail_ttft_p50_ms"] == 600.0


def test_failed_side_has_no_ratio_and_is_reported(tmp_path: Path) -> None:
    trials = serve.Trials()
    for key, kind, k in (("base", "base", 0), ("1", "uniform", 1), ("zipf", "zipf", 8)):
        trials.mixes[key] = mixes.Mix(key, kind, k, 4)
        trials.tails[key] = [set(), set()] if kind == "base" else [{"a2"}, {"a2"}]
        trials.results[key] = {"loramux": [_trial(100), _trial(110)],
                               "vllm": [_trial(90), _trial(95)]}
    trials.results["1"]["vllm"] = [_trial(90), _trial(0, failures=3)]
    slots = {"loramux_effective_max_loras": 4, "source": "test", "vllm_max_loras": 4,
             "max_cpu_loras": 4, "max_lora_rank": 64}
    result = serve.summary(trials, slots)
    assert result["mixes"]["base"]["ratio_loramux_over_vllm"]["median"] > 1
    failed = result["mixes"]["1"]
    assert failed["ratio_loramux_over_vllm"] is None
    assert "3 request(s) failed" in failed["ratio_error"] and "HTTP 500" in failed["ratio_error"]
    assert result["ratio_to_base"]["1"]["vllm"] is None
    assert result["ratio_to_base"]["zipf"]["loramux"]["median"] == 1.0
    assert result["mixes"]["zipf"]["loramux"]["tail_ttft_p99_ms"]["median"] == 200.0

    results = {"timestamp": "20260101T000000Z", "quick": True, "command": "test",
               "config": {}, "machine": {}, "gateway": {"none": {"serve": result}}}
    results["errors"] = runner.collect_errors(results)
    assert any("HTTP 500" in e for e in results["errors"])
    path = report.write(results, tmp_path, show=False)
    markdown = path.with_suffix(".md").read_text()
    assert "| K=1 | 105.0 (100.0-110.0) | FAILED | n/a (failed) |" in markdown
    assert "| Zipf over 8 | 1.00 | 1.00 |" in markdown
    assert "## Failures" in markdown
    assert json.loads(path.read_text())["errors"] == results["errors"]


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0], 99) == 1.99
