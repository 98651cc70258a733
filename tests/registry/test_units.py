"""References, quantization strings, and validation of adapters PEFT really writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loramux import registry as reg
from loramux.registry import (
    AdapterRef,
    ConfigMismatch,
    InvalidName,
    LocalRegistry,
    QuantizationInfo,
    RemoteRegistry,
)
from loramux.registry.validate import Limits, scan_folder, validate_adapter


@pytest.mark.parametrize("text,expected", [
    ("chat", AdapterRef("chat")),
    ("chat@7", AdapterRef("chat", version=7)),
    ("chat:prod", AdapterRef("chat", alias="prod")),
    ("chat:latest", AdapterRef("chat")),
    ("chat@latest", AdapterRef("chat")),
    ("chat@sha256:0123456789ab", AdapterRef("chat", digest="sha256:0123456789ab")),
    ("a.b_c-9", AdapterRef("a.b_c-9")),
])
def test_refs_parse(text: str, expected: AdapterRef) -> None:
    ref = AdapterRef.parse(text)
    assert ref == expected
    assert AdapterRef.parse(str(ref)) == ref


@pytest.mark.parametrize("text", [
    "", "../x", "a/b", "a b", "A", "chat@", "chat@0", "chat@-1", "chat@1.5", "chat:",
    "chat:7", "chat@sha256:0123", "chat@sha256:XYZ456789abc", "x" * 65, "a..b", "chat:a b",
    "chat:prod@1",
])
def test_bad_refs(text: str) -> None:
    with pytest.raises(InvalidName):
        AdapterRef.parse(text)


def test_quantization_strings() -> None:
    q = QuantizationInfo.parse("NF4+dq+bf16")
    assert (q.method, q.double_quant, q.compute_dtype) == ("nf4", True, "bfloat16")
    assert QuantizationInfo.parse("none") == QuantizationInfo()
    assert QuantizationInfo.parse("int8,fp16").compute_dtype == "float16"
    for bad in ("", "q4", "nf4+triple"):
        with pytest.raises(InvalidName):
            QuantizationInfo.parse(bad)


def test_open_picks_the_implementation(tmp_path: Path, monkeypatch) -> None:
    with reg.open(tmp_path / "a") as local:
        assert isinstance(local, LocalRegistry)
    monkeypatch.setenv("LORAMUX_REGISTRY", str(tmp_path / "env"))
    with reg.open() as from_env:
        assert isinstance(from_env, LocalRegistry) and from_env.root == tmp_path / "env"
    monkeypatch.setenv("LORAMUX_TOKEN", "tok")
    with reg.open("http://127.0.0.1:1") as remote:
        assert isinstance(remote, RemoteRegistry)
        assert remote._http.headers["authorization"] == "Bearer tok"
    for impl in (LocalRegistry, RemoteRegistry):
        assert isinstance(impl.__new__(impl), reg.Registry)


def test_rank_pattern_and_regex_targets(make_adapter) -> None:
    folder = make_adapter(r=4)
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(r=8, rank_pattern={"q_proj": 4, "v_proj": 4})
    (folder / "adapter_config.json").write_text(json.dumps(config))
    facts = validate_adapter(scan_folder(folder, Limits()), Limits()).lora
    assert (facts.r, facts.max_rank) == (8, 8)
    config.update(r=4, rank_pattern={}, target_modules=r".*\.(q_proj|v_proj)")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    assert validate_adapter(scan_folder(folder, Limits()), Limits()).lora.r == 4
    config.update(target_modules=r".*\.q_proj")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigMismatch, match="v_proj"):
        validate_adapter(scan_folder(folder, Limits()), Limits())


@pytest.fixture(scope="module")
def peft_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Adapters written by PEFT itself on a tiny random Llama (hidden 32, 2 layers)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    base = tmp_path_factory.mktemp("peft")
    LlamaForCausalLM(config).save_pretrained(base / "base", safe_serialization=True)
    out = {"base": base / "base"}
    for name, lora in {
        "plain": peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                 task_type="CAUSAL_LM"),
        "rslora-all": peft.LoraConfig(r=2, lora_alpha=4, target_modules="all-linear",
                                      use_rslora=True, task_type="CAUSAL_LM"),
        "dora-pattern": peft.LoraConfig(r=4, lora_alpha=8, target_modules=["k_proj", "o_proj"],
                                        use_dora=True, rank_pattern={"o_proj": 2}),
    }.items():
        model = peft.get_peft_model(LlamaForCausalLM.from_pretrained(base / "base"), lora)
        model.save_pretrained(base / name, safe_serialization=True)
        out[name] = base / name
    return out


def test_real_peft_adapters_round_trip(peft_adapters: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    with LocalRegistry(tmp_path / "store") as registry:
        plain = registry.push(peft_adapters["plain"], "plain", base_model=peft_adapters["base"])
        assert (plain.lora.r, plain.lora.lora_alpha, plain.lora.task_type) == (4, 8, "CAUSAL_LM")
        assert sorted(plain.lora.target_modules) == ["q_proj", "v_proj"]
        assert "README.md" in {f.path for f in plain.files}
        rs = registry.push(peft_adapters["rslora-all"], "rslora")
        assert rs.lora.use_rslora and rs.lora.r == 2
        dora = registry.push(peft_adapters["dora-pattern"], "dora")
        assert dora.lora.use_dora and dora.lora.rank_pattern == {"o_proj": 2}

        pulled = registry.pull("plain", tmp_path / "pulled")
        base = LlamaForCausalLM.from_pretrained(peft_adapters["base"])
        model = PeftModel.from_pretrained(base, pulled)
        state = model.state_dict()
        key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"
        from safetensors.torch import load_file

        saved = load_file(peft_adapters["plain"] / "adapter_model.safetensors")
        assert torch.equal(state[key], saved[key.replace(".default", "")])


def test_errors_share_the_loramux_root() -> None:
    """One root for every part: the CLI and the HTTP apps read status and exit code off it."""
    from loramux.errors import LoramuxError
    from loramux.registry.errors import RegistryError, _all_subclasses

    for cls in _all_subclasses(RegistryError):
        assert issubclass(cls, LoramuxError)
        assert 400 <= cls.status < 600 and cls.exit_code > 0
    assert (reg.NotLora.code, reg.NotLora("x").status) == ("not_lora", 400)
    assert str(reg.NotFound("gone")) == "gone"


def test_the_registry_protocol_documents_every_method() -> None:
    methods = [n for n, v in vars(reg.Registry).items()
               if callable(v) and not n.startswith("_")]
    assert {"push", "resolve", "show", "list", "pull", "open_blob", "alias_set", "alias_rm",
            "delete", "gc", "verify", "log", "alias_at", "close"} <= set(methods)
    for name in methods:
        doc = getattr(reg.Registry, name).__doc__
        assert doc and len(doc.split()) > 5, name
    for impl in (LocalRegistry, RemoteRegistry):
        assert impl.show is reg.Registry.show and impl.pull is reg.Registry.pull
