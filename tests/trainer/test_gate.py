"""`loramux train --publish --alias prod --gate-eval FILE --gate-server URL`: the new version is
published, and the alias moves to it only if it passes `loramux registry promote`'s gate on the
server. The publish step runs for real (registry, `loramux serve` app over HTTP, openai client)
on a saved adapter; the engine is a fake whose answers depend on the adapter digest it runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

import loramux.registry as reg
from loramux.server.app import create_app
from loramux.server.engines.base import Delta
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter
from loramux.trainer.cli import _print_outcome, _standalone
from loramux.trainer.config import TrainConfig
from loramux.trainer.publish import publish

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
from fake_engine import FakeEngine, LiveServer, build_runtime

SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
QUESTIONS = 8


class KnowItAll(FakeEngine):
    """Answers ``q<i>`` with ``a<i>`` for the adapters in ``good``, wrongly for the others."""

    good: set[str]

    async def generate(self, request):
        prompt = "".join(chr(t) for t in request.prompt_token_ids)
        i = prompt.rsplit("<user>q", 1)[1]
        right = request.adapter is not None and request.adapter.digest in self.good
        yield Delta(0, f"a{i}" if right else "no idea", [1], "stop")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[SimpleNamespace]:
    adapters = {k: write_adapter(tmp_path / k, SHAPES, rank=2, seed=s)
                for k, s in (("good1", 1), ("bad", 2), ("good2", 3))}
    scratch = reg.open(tmp_path / "scratch")  # content digests, known before publishing
    digests = {k: scratch.push(folder, k).digest for k, folder in adapters.items()}
    scratch.close()
    registry = reg.open(tmp_path / "registry")
    registry.push(adapters["good1"], "helper", alias="prod")
    registry.close()
    engine = KnowItAll()
    engine.good = {digests["good1"], digests["good2"]}
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})
        + "\n" for i in range(QUESTIONS)))
    settings = ServerSettings.from_sources({"base": "fake-base", "resolve_ttl_s": 0}, environ={})
    runtime = build_runtime(settings, tmp_path / "registry", tmp_path / "cache", engine)
    with LiveServer(create_app(runtime)) as url:
        yield SimpleNamespace(root=tmp_path, url=url, adapters=adapters, eval_file=eval_file)
    runtime.close()


def _report() -> dict:
    """The parts of a training report that publishing reads (lineage)."""
    return {"data": {"train_digest": "sha256:" + "0" * 64, "train_examples": 32,
                     "eval_examples": 8, "skipped_records": 0},
            "metrics": {"train_loss": 0.1}, "library_versions": {}, "runtime": {}}


def _publish(stack: SimpleNamespace, adapter: str) -> tuple[str, dict]:
    config = TrainConfig(base="loramux/random-base", data=stack.root / "train.jsonl",
                         out=stack.adapters[adapter], publish=True, name="helper", alias="prod",
                         registry=str(stack.root / "registry"), gate_eval=stack.eval_file,
                         gate_server=stack.url, gate_min_exact=0.5)
    report = _report()
    return publish(stack.adapters[adapter], config, report).ref, report


def _prod(stack: SimpleNamespace) -> int:
    with reg.open(stack.root / "registry") as registry:
        return registry.resolve("helper:prod").version


def test_published_but_gated(stack: SimpleNamespace, capsys) -> None:
    ref, report = _publish(stack, "bad")
    assert ref == "helper@2" and _prod(stack) == 1  # published, alias unmoved
    gate = report["gate"]
    assert (gate["passed"], gate["exit_code"], gate["alias"]) == (False, 10, "prod")
    assert gate["line"].startswith("gate failed: helper@2 scored 0.000 (exact 0.000) vs current "
                                   "1.000 (exact 1.000) on 8 records")
    with reg.open(stack.root / "registry") as registry:
        evaluate = registry.log(name="helper", limit=1)[0]
        assert (evaluate.action, evaluate.id) == ("evaluate", gate["evaluation_id"])

    # the CLI's last words: the published ref without the alias, the gate's line, exit 10
    result = SimpleNamespace(report=report | {"verdict": {"line": "learned"}},
                             reference=ref, skipped=[],
                             config=SimpleNamespace(alias="prod", keep_checkpoints=False),
                             adapter_dir=stack.adapters["bad"], report_path=Path("r.json"),
                             loss_curve_path=Path("c.png"), config_path=Path("c.yaml"))
    from rich.console import Console

    with pytest.raises(typer.Exit) as exited:
        _print_outcome(Console(width=200), result)
    assert exited.value.exit_code == 10
    out, err = capsys.readouterr()
    assert "published helper@2\n" in out and "(alias prod)" not in out
    assert err.strip().startswith("error: gate failed: helper@2 scored 0.000")

    ref, report = _publish(stack, "good2")
    assert ref == "helper@3" and _prod(stack) == 3
    assert report["gate"]["passed"] and report["gate"]["line"].startswith(
        "gate passed: scored 1.000 (exact 1.000) vs current 1.000")


def test_the_gate_could_not_run(stack: SimpleNamespace) -> None:
    stack.url = "http://127.0.0.1:9"
    ref, report = _publish(stack, "good2")
    assert ref == "helper@2" and _prod(stack) == 1
    assert report["gate"]["exit_code"] == 11
    assert report["gate"]["line"].startswith("the gate could not run: server ")
    assert report["gate"]["line"].endswith("unreachable: Connection error.; helper:prod not moved")


def test_gate_options_are_checked_before_training(tmp_path: Path, small_chat: Path) -> None:
    runner = CliRunner()
    common = ["train", "--base", "x", "--data", str(small_chat), "--out", str(tmp_path / "o"),
              "--publish", "--name", "helper", "--dry-run"]
    result = runner.invoke(_standalone(), [*common, "--gate-eval", "e.jsonl"])
    assert result.exit_code == 2 and "gate_eval gates the alias move: it needs --alias and " \
        "--gate-server" in result.output, result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    result = runner.invoke(_standalone(), [*common, "--alias", "prod", "--gate-eval", str(bad),
                                           "--gate-server", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and f"{bad}:1: expected" in result.output, result.output
    assert "Traceback" not in result.output
