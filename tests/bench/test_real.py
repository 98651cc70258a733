"""Without servers: the real part's adapters fit the real shapes (GQA, tied lm_head), its sizes,
one compute dtype on every server command, and its report table and header."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loramux.bench import mixes, real, report, runner, serve, servers
from loramux.bench.config import BenchConfig
from loramux.bench.loadgen import LoadResult
from loramux.bench.workload import Workload
from loramux.support.adapters import write_adapter

# SmolLM2-135M-Instruct's config.json, the fields the shapes come from
SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
           "vocab_size": 49152, "tie_word_embeddings": True}


@pytest.fixture
def real_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "real-base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMOLLM2))
    (folder / "loramux_base.json").write_text(json.dumps({"parameters": 134515008}))
    return folder


def test_adapters_follow_grouped_query_attention_and_leave_the_tied_head(real_dir: Path,
                                                                          tmp_path: Path) -> None:
    shapes = real.adapter_shapes(real_dir)
    assert len(shapes) == 30 * 7
    layer = {n.rsplit(".", 1)[-1]: s for n, s in shapes.items() if ".layers.0." in n}
    assert layer == {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192),
                     "o_proj": (576, 576), "gate_proj": (576, 1536), "up_proj": (576, 1536),
                     "down_proj": (1536, 576)}
    assert not any("lm_head" in n or "embed" in n for n in shapes)

    from safetensors.numpy import load_file

    folder = write_adapter(tmp_path / "a", shapes, rank=16, seed=1)
    tensors = load_file(folder / "adapter_model.safetensors")
    key = "base_model.model.model.layers.29.self_attn.k_proj"
    assert tensors[f"{key}.lora_A.weight"].shape == (16, 576)
    assert tensors[f"{key}.lora_B.weight"].shape == (192, 16)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert "lm_head" not in config["target_modules"] and len(config["target_modules"]) == 7


def test_real_sizes_and_their_checks() -> None:
    rcfg = BenchConfig().real()
    assert rcfg.ks == (0, 8, 64) and rcfg.adapters == 64 and rcfg.max_cpu_loras == 64
    assert (rcfg.requests, rcfg.prompt_tokens, rcfg.max_tokens) == (64, 32, 16)
    assert rcfg.max_lora_rank == 16 and rcfg.mixed_adapters == 0
    quick = BenchConfig.preset(True).real()
    assert quick.ks == (0, 8) and quick.adapters == quick.max_cpu_loras == 8
    with pytest.raises(ValueError, match="at least K requests"):
        BenchConfig(real_requests=32).check()
    with pytest.raises(ValueError, match="dtype"):
        BenchConfig(dtype="float16").check()
    # K = 64 over 64 requests: every adapter asked for exactly once, the same list each side
    wl = Workload(model_dir=Path("m"), parameters=1, served_name="real-base",
                  adapters={f"a{i:02d}": Path("x") for i in range(64)}, cold_adapters={},
                  mixed_adapters={}, registry_dir=Path("r"), scratch=Path("s"))
    k64 = mixes.sweep(rcfg)[-1]
    assert sorted(mixes.models_for(wl, rcfg, k64, 0)) == sorted(wl.names)


def test_every_server_gets_the_same_concrete_dtype(tmp_path: Path) -> None:
    limits = BenchConfig(dtype="float32").limits("bitsandbytes", 8)
    lmx = servers.loramux_server(Path("m"), Path("r"), Path("c"), limits, tmp_path / "l.log")
    vllm = servers.vllm_server(Path("m"), "m", {}, limits, tmp_path / "v.log")
    naive = servers.naive_server(Path("m"), "m", {}, limits, tmp_path / "n.log")
    for cmd in (lmx.args, vllm.cmd, naive.cmd):
        assert cmd[cmd.index("--dtype") + 1] == "float32", cmd
    auto = servers.EngineLimits().compute_dtype
    assert auto in ("bfloat16", "float32")


def _trial(tokens_per_s: float) -> LoadResult:
    return LoadResult(requests=2, concurrency=32, wall_s=1.0, output_tokens=int(tokens_per_s),
                      failures=0, first_error=None, ttft_s=[0.5, 1.0], latency_s=[1.0, 1.0],
                      models=["a00", "a01"])


def test_report_has_the_real_table_and_the_dtype(real_dir: Path, tmp_path: Path) -> None:
    rcfg = BenchConfig().real()
    trials = serve.Trials()
    speeds = {"base": (40, 38), "8": (30, 10), "64": (20, 8)}
    for mix in mixes.sweep(rcfg):
        trials.mixes[mix.key] = mix
        trials.tails[mix.key] = [set(), set()]
        lmx, vllm = speeds[mix.key]
        trials.results[mix.key] = {"loramux": [_trial(lmx), _trial(lmx)],
                                   "vllm": [_trial(vllm), _trial(vllm)]}
    wl = Workload(model_dir=real_dir, parameters=134515008, served_name="real-base",
                  adapters={f"a{i:02d}": Path("x") for i in range(64)}, cold_adapters={},
                  mixed_adapters={}, registry_dir=Path("r"), scratch=Path("s"),
                  recipe={"rank": 16})
    result = {"quantization": "bitsandbytes", "dtype": "float32",
              "workload": real.describe(wl, rcfg), "serve": serve.summary(trials, {})}
    results = {"timestamp": "20260101T000000Z", "quick": False, "command": "test",
               "config": {}, "dtype": "float32", "gateway": {}, "real": result,
               "machine": {"cpu_model": "AMD EPYC", "bf16_instructions": False}}
    results["errors"] = runner.collect_errors(results)
    assert results["errors"] == []
    markdown = report.write(results, tmp_path, show=False).with_suffix(".md").read_text()
    assert "compute dtype float32 for every server and loop (this CPU has no bf16" in markdown
    assert "R. Real base SmolLM2-135M-Instruct" in markdown and "float32)" in markdown
    assert "| base | 40.0 | 38.0 | 1.05 | 1.00 | 1.00 | 750 / 995 | 750 / 995 |" in markdown
    assert "| K=64 | 20.0 | 8.0 | 2.50 | 0.50 | 0.21 |" in markdown
    assert "k/v 576 -> 192" in markdown and "none on lm_head" in markdown

    skipped = results | {"real": {"quantization": "bitsandbytes", "dtype": "float32",
                                  "skipped": "servers not started"}}
    assert "| not measured | servers not started |" in report.markdown(skipped)
