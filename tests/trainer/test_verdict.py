"""Whether the adapter learned: default eval data, the verdict rule, the publish gate.

The fast tests pin the rule and the eval-data choices; the one slow test trains the issue's
default-settings run in small form (default learning rate, two steps) and checks that it ends
with the warning and that ``--publish`` refuses without ``--force`` and publishes with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loramux.trainer.api import prepare_data
from loramux.trainer.config import build_config
from loramux.trainer.errors import ConfigError, PublishRefused
from loramux.trainer.evaluation import auto_split_size, exact_match_items, sibling_eval_file
from loramux.trainer.verdict import from_report, judge, refusal

runner = CliRunner()


def _chat(i: int, answer: str = "yes") -> str:
    return json.dumps({"messages": [{"role": "user", "content": f"question {i}?"},
                                    {"role": "assistant", "content": answer}]}) + "\n"


def _write(path: Path, n: int, answer: str = "yes") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(_chat(i, answer) for i in range(n)))
    return path


# -- the rule ---------------------------------------------------------------------------------


def test_loss_must_fall_by_the_threshold() -> None:
    assert judge(4.0, 0.4, min_eval_gain=0.1).learned is True
    assert judge(4.0, 3.6, min_eval_gain=0.1).learned is True  # exactly 10 %
    assert judge(4.0, 3.7, min_eval_gain=0.1).learned is False
    assert judge(4.0, 4.5, min_eval_gain=0.1).learned is False
    assert judge(4.0, 3.7, min_eval_gain=0.05).learned is True  # the threshold is a setting


def test_exact_match_must_rise_when_measured() -> None:
    kw = {"min_eval_gain": 0.1, "exact_match_total": 36}
    assert judge(3.9, 0.4, exact_match_before=0.0, exact_match_after=0.97, **kw).learned
    # The run: the loss fell, but not one more prompt is answered.
    assert not judge(3.9, 1.8, exact_match_before=0.0, exact_match_after=0.0, **kw).learned
    assert not judge(3.9, 1.8, exact_match_before=0.5, exact_match_after=0.4, **kw).learned
    assert judge(3.9, 1.8, exact_match_before=1.0, exact_match_after=1.0, **kw).learned


def test_the_verdict_line() -> None:
    good = judge(3.9, 0.4, min_eval_gain=0.1, exact_match_before=0.0, exact_match_after=35 / 36,
                 exact_match_total=36)
    assert good.line() == ("eval loss 3.9 → 0.4, exact match 0% → 97% (of 36): the adapter "
                           "learned")
    bad = judge(3.9, 3.8, min_eval_gain=0.1)
    line = bad.line(72, 2e-4)
    assert line.startswith("warning: the adapter did not learn: eval loss 3.9 → 3.8")
    assert "less than 10%" in line and "--max-steps" in line and "--lr" in line
    assert "72 steps at lr 0.0002" in line
    assert "--max-steps 1000 --lr 2e-3 --compute-dtype float32" in line
    none = judge(None, None, min_eval_gain=0.1, reason="off (--no-eval)")
    assert none.learned is None and none.line().startswith("warning: not evaluated")


def test_only_a_measured_failure_refuses_and_reports_round_trip() -> None:
    bad = judge(3.9, 3.8, min_eval_gain=0.1, exact_match_before=0.0, exact_match_after=0.0,
                exact_match_total=36)
    assert "pass --force" in (refusal(bad) or "")
    assert refusal(judge(3.9, 0.4, min_eval_gain=0.1)) is None
    assert refusal(judge(None, None, min_eval_gain=0.1)) is None  # nothing measured
    assert refusal(None) is None  # a report from before verdicts existed
    assert from_report({"verdict": bad.as_dict()}) == bad
    assert from_report({}) is None


# -- default eval data ------------------------------------------------------------------------


@pytest.mark.parametrize(("records", "held_out"), [
    (1, 0), (9, 0), (10, 1), (14, 1), (15, 2), (100, 10), (192, 19), (2000, 200), (10**5, 200)])
def test_split_sizes(records: int, held_out: int) -> None:
    assert auto_split_size(records) == held_out


def test_an_eval_file_next_to_train_is_used(tmp_path: Path) -> None:
    train = _write(tmp_path / "d" / "train.jsonl", 40)
    assert sibling_eval_file(train) is None
    _write(tmp_path / "d" / "validation.jsonl", 3)
    assert sibling_eval_file(train) == tmp_path / "d" / "validation.jsonl"
    evals = _write(tmp_path / "d" / "eval.jsonl", 5)
    assert sibling_eval_file(train) == evals  # eval wins over validation
    assert sibling_eval_file(_write(tmp_path / "d" / "other.jsonl", 4)) is None  # not train.*

    data = prepare_data(build_config(None, {"base": "b", "data": train, "out": tmp_path / "o"}))
    assert (len(data.train), len(data.eval), data.eval_path) == (40, 5, evals)
    assert "found next to train.jsonl" in data.eval_note
    # An explicit choice wins over the file next to the data.
    data = prepare_data(build_config(None, {"base": "b", "data": train, "out": tmp_path / "o",
                                            "eval_split": 0.25}))
    assert (len(data.train), len(data.eval), data.eval_path) == (30, 10, None)


def test_else_a_split_or_none_or_off(tmp_path: Path) -> None:
    common = {"base": "b", "out": tmp_path / "o"}
    data = prepare_data(build_config(None, {**common, "data": _write(tmp_path / "a.jsonl", 50)}))
    assert (len(data.train), len(data.eval)) == (45, 5) and "5 of 50 records held out" in \
        data.eval_note
    assert not {id(e) for e in data.train} & {id(e) for e in data.eval}
    small = _write(tmp_path / "b.jsonl", 9)
    data = prepare_data(build_config(None, {**common, "data": small}))
    assert (len(data.train), len(data.eval)) == (9, 0) and "too few" in data.eval_note
    data = prepare_data(build_config(None, {**common, "data": tmp_path / "a.jsonl",
                                            "evaluate": False}))
    assert (len(data.train), len(data.eval)) == (50, 0) and "off (--no-eval)" in data.eval_note
    with pytest.raises(ConfigError, match="no-eval contradicts"):
        build_config(None, {**common, "data": small, "evaluate": False, "eval_split": 0.2})


def test_cli_says_where_eval_data_comes_from(tmp_path: Path) -> None:
    from loramux.trainer.cli import _standalone

    train = _write(tmp_path / "train.jsonl", 30)
    args = ["train", "--base", "m", "--data", str(train), "--out", "o", "--dry-run"]
    result = runner.invoke(_standalone(), args)
    assert result.exit_code == 0 and "eval: 3 of 30 records held out" in result.output
    result = runner.invoke(_standalone(), [*args, "--no-eval"])
    assert result.exit_code == 0 and "eval: off (--no-eval)" in result.output
    assert "evaluate: false" in result.output


def test_exact_match_only_for_short_chat_answers(demo_base: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from loramux.trainer.data import load_data

    tokenizer = AutoTokenizer.from_pretrained(demo_base)
    short = load_data(_write(tmp_path / "s.jsonl", 60)).examples
    items, reason = exact_match_items(short, tokenizer, None)
    assert len(items) == 50 and reason == ""  # at most 50 prompts
    assert items[0].reference == "yes" and items[0].prompt[-1]["role"] == "user"
    long = load_data(_write(tmp_path / "l.jsonl", 5, " ".join(["word"] * 40))).examples
    items, reason = exact_match_items(long, tokenizer, None)
    assert items == [] and "longer than 32" in reason
    items, reason = exact_match_items(short, tokenizer, "Q: {prompt}\nA: ")
    assert items == [] and "prompt template" in reason


def test_publishing_later_is_gated_too(tmp_path: Path) -> None:
    """publish_trained (the demo and `make demo` use it) applies the same gate before it
    touches the registry; --force publishes anyway (shown on a real run in the slow test)."""
    from loramux.trainer.publish import publish_trained

    folder = tmp_path / "adapter"
    folder.mkdir()
    build_config(None, {"base": "b", "data": _write(tmp_path / "t.jsonl", 20),
                        "out": folder}).save(folder / "train_config.yaml")
    bad = judge(8.5, 8.1, min_eval_gain=0.1)
    (folder / "training_report.json").write_text(json.dumps({"verdict": bad.as_dict()}))
    registry = tmp_path / "registry"
    with pytest.raises(PublishRefused, match="no better than the base"):
        publish_trained(folder, "never", registry)
    assert not registry.exists()


# -- the run, small -------------------------------------------------------------------


@pytest.mark.slow
def test_default_settings_warn_and_publish_only_with_force(demo_base: Path, demo_data,
                                                           tmp_path: Path) -> None:
    """`loramux train --data DIR/train.jsonl --publish` with the default learning rate and a
    few steps: the eval file next to the data is used, the run ends with the warning, nothing
    is published (exit 3); the same with --force publishes, with the verdict in the lineage."""
    import loramux.registry as reg
    from loramux.trainer.cli import _standalone

    lines = (demo_data["codeword"] / "train.jsonl").read_text().splitlines()[:16]
    evals = (demo_data["codeword"] / "eval.jsonl").read_text().splitlines()[:6]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "d" / "eval.jsonl").write_text("\n".join(evals) + "\n")
    registry = tmp_path / "registry"
    args = ["train", "--base", str(demo_base), "--data", str(tmp_path / "d" / "train.jsonl"),
            "--name", "codeword", "--publish", "--registry", str(registry), "--max-steps", "2",
            "--threads", "2", "--max-seq-length", "128", "--no-progress"]

    refused = runner.invoke(_standalone(), [*args, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 3, refused.output
    assert "found next to train.jsonl, 6 records" in refused.output
    out = refused.output.replace("\n", " ")
    assert "warning: the adapter did not learn: eval loss" in out
    assert "exact match 0% → 0% (of 6)" in out and "--max-steps" in out
    assert "error: not published: the adapter is no better than the base" in out
    assert "Traceback" not in refused.output
    assert not registry.exists() or reg.open(registry).list() == []
    report = json.loads((tmp_path / "a" / "training_report.json").read_text())
    assert report["verdict"]["learned"] is False and "publish_refused" in report

    forced = runner.invoke(_standalone(), [*args, "--out", str(tmp_path / "b"), "--force"])
    assert forced.exit_code == 0, forced.output
    assert "codeword@1" in forced.output
    assert forced.output.rstrip().splitlines()[-1].startswith("warning:") or \
        "warning: the adapter did not learn" in forced.output.replace("\n", " ")
    with reg.open(registry) as r:
        verdict = r.resolve("codeword").lineage.model_dump()["verdict"]
    assert verdict["learned"] is False and verdict["exact_match_total"] == 6
    assert verdict["eval_loss_after"] > 0.9 * verdict["eval_loss_before"]
