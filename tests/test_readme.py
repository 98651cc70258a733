"""Every promise the README makes in code is checked here, so the README cannot drift.

* Each ```python block runs. A block that talks to a live server (``base_url=...``) runs against
  an in-process transport that answers like the server, so the call's shape is still checked.
* Each ``loramux.x.y`` named in backticks imports and resolves.
* Each ``loramux`` command line in a ```bash block names real sub-commands and real flags, and
  each ``make`` target exists.
* ``loramux.trainer.train(config)`` takes ``config`` as a dict, a YAML path or a ``TrainConfig``.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(README) if kind == lang]


def _prose() -> str:
    return FENCE.sub("", README)


def test_readme_has_the_snippets_this_file_checks() -> None:
    assert _blocks("python") and _blocks("bash")
    assert "loramux.trainer.train(config)" in README


# -- python blocks ---------------------------------------------------------------------------


def _fake_server(requests: list[httpx.Request]) -> httpx.MockTransport:
    """Answers like loramux's OpenAI endpoints, recording each request."""

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        body = json.loads(request.content or b"{}")
        if request.url.path.endswith("/chat/completions"):
            return httpx.Response(200, json={
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        if request.url.path.endswith("/completions"):
            return httpx.Response(200, json={
                "id": "cmpl-1", "object": "text_completion", "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]})
        return httpx.Response(404, json={"error": {"message": "not served", "type": "x"}})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("code", _blocks("python"))
def test_python_block_runs(code: str, tmp_path: Path, monkeypatch) -> None:
    import openai

    requests: list[httpx.Request] = []
    real = openai.OpenAI

    class OfflineOpenAI(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["http_client"] = httpx.Client(transport=_fake_server(requests))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(openai, "OpenAI", OfflineOpenAI)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    if "base_url" in code:
        assert requests, "the snippet sent no request"
        for request in requests:
            assert request.url.path.startswith("/v1/")
            assert json.loads(request.content)["model"]


# -- names in backticks ----------------------------------------------------------------------


def _dotted_names() -> list[str]:
    spans = re.findall(r"`([^`\n]+)`", README)
    names = {m for span in spans for m in re.findall(r"\bloramux(?:\.[A-Za-z_]\w*)+", span)}
    return sorted(names)


def _resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_readme_names_python_api() -> None:
    assert "loramux.trainer.train" in _dotted_names()
    assert "loramux.registry.open" in _dotted_names()


@pytest.mark.parametrize("dotted", _dotted_names())
def test_dotted_name_exists(dotted: str) -> None:
    assert _resolve(dotted) is not None


@pytest.mark.parametrize("path", sorted(set(re.findall(r"`([\w./-]+\.py)`", README))))
def test_named_source_file_exists(path: str) -> None:
    assert (REPO / path).is_file(), path


# -- command lines ---------------------------------------------------------------------------


def _command_lines() -> list[list[str]]:
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(words)
    return lines


def _loramux_lines() -> list[list[str]]:
    return [w[1:] for w in _command_lines() if w[0].endswith("bin/loramux") or w[0] == "loramux"]


def test_readme_shows_every_command_group() -> None:
    verbs = {w[0] for w in _loramux_lines() if w and not w[0].startswith("-")}
    assert {"demo", "train", "registry", "serve", "bench"} <= verbs


def _is_group(command: Any) -> bool:
    return hasattr(command, "list_commands")


@pytest.mark.parametrize("words", _loramux_lines(), ids=lambda w: " ".join(w)[:60])
def test_command_line_names_real_commands_and_flags(words: list[str]) -> None:
    from loramux.cli import app

    command = typer.main.get_command(app)  # typer's own (vendored) click types
    ctx = typer.Context(command)
    rest = list(words)
    while rest and _is_group(command) and not rest[0].startswith("-"):
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            break
        command, rest = sub, rest[1:]
    flags = {name for p in command.params for name in (*p.opts, *p.secondary_opts)}
    flags |= {"--help"}
    for word in rest:
        if word.startswith("--"):
            assert word.split("=", 1)[0] in flags, f"{' '.join(words)}: no flag {word}"
        elif _is_group(command):
            pytest.fail(f"{' '.join(words)}: {command.name} has no sub-command {word!r}")


def test_make_targets_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = {m for m in re.findall(r"^([\w-]+):", makefile, re.MULTILINE)}
    used = {w[1] for w in _command_lines() if w[0] == "make" and len(w) > 1}
    assert used and used <= targets, used - targets


# -- the trainer's Python entry point --------------------------------------------------------


def test_trainer_train_accepts_dict_yaml_and_config(tmp_path: Path) -> None:
    """Each form reaches data validation (a DataError naming the file), so each was accepted."""
    import loramux.trainer
    from loramux.trainer.errors import DataError

    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    fields = {"base": "unused-base", "data": str(data), "out": str(tmp_path / "out")}
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("".join(f"{k}: {v}\n" for k, v in fields.items()))
    for config in (fields, yaml_file, str(yaml_file), loramux.trainer.TrainConfig(**fields)):
        with pytest.raises(DataError, match=r"train\.jsonl:1: no assistant turn"):
            loramux.trainer.train(config)
    assert loramux.trainer.TrainResult.__name__ == "TrainResult"
