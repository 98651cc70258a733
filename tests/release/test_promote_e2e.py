"""Eval-gated promotion on the real serving stack: `loramux serve` (the transformers reference
engine, NF4, on the demo base) in a child process, the trained demo adapters, and the
`loramux registry promote` command a user runs. The codeword adapter is promoted over the caps
adapter published under the codeword name; the caps adapter, published again as the newest
version, is refused and the alias stays. `registry show` and `registry log` display both.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import loramux.registry as reg
from loramux.cli import registry_app as app  # with release's verbs mounted

pytestmark = pytest.mark.slow
runner = CliRunner()
EVAL_RECORDS = 8  # enough to tell 0 % from 100 %, few enough to keep the test short


def _args(registry: Path, url: str, ref: str, eval_file: Path) -> list[str]:
    return ["promote", ref, "--alias", "prod", "--eval", str(eval_file), "--server", url,
            "--min-exact", "0.8", "--registry", str(registry)]


def test_promote_on_the_serving_stack(demo_base: Path, demo_adapters: dict[str, Path],
                                      demo_data: dict[str, Path], tmp_path: Path) -> None:
    from loramux.support.launch import ServerProcess
    from loramux.trainer.publish import publish_trained

    registry = tmp_path / "registry"
    # v1: the caps adapter under the codeword name (bad at codeword), v2: the codeword adapter,
    # v3: caps again (the newest version is not the best one)
    for task in ("caps", "codeword", "caps"):
        publish_trained(demo_adapters[task], "codeword", registry)
    with reg.open(registry) as r:
        r.alias_set("codeword", "prod", 1)
    lines = (demo_data["codeword"] / "eval.jsonl").read_text().splitlines()[:EVAL_RECORDS]
    eval_file = tmp_path / "codeword-eval.jsonl"
    eval_file.write_text("\n".join(lines) + "\n")

    args = ["--base", str(demo_base), "--registry", str(registry), "--engine", "transformers",
            "--cache-dir", str(tmp_path / "cache"), "--max-model-len", "512"]
    with ServerProcess(args, log=tmp_path / "server.log") as url:
        # the console script a user runs once; in-process (same typer app) after that
        loramux = Path(sys.executable).with_name("loramux")
        good = subprocess.run([str(loramux), "registry", *_args(registry, url, "codeword@2",
                                                                eval_file)],
                              capture_output=True, text=True, timeout=600)
        bad = runner.invoke(app, _args(registry, url, "codeword@3", eval_file))

    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("promoted codeword@2 to codeword:prod (was @1): scored "), \
        good.stdout
    assert bad.exit_code == 10, bad.output
    line = bad.stderr.strip()
    assert line.startswith("error: gate failed: codeword@3 scored ") and "\n" not in line, line
    assert line.endswith("codeword:prod stays at codeword@2"), line

    with reg.open(registry) as r:
        assert r.resolve("codeword:prod").version == 2
        failed, promoted, _, passed = r.log(name="codeword", limit=4)
        scores = {e.detail["candidate"]["version"]: e.detail["candidate"]["exact"]
                  for e in (failed, passed)}
        assert scores[2] >= 0.8 and scores[3] <= 0.2, scores  # each adapter good at its task
        assert passed.detail["current"]["exact"] <= 0.2  # v1 is caps as well
        assert failed.detail["current"]["version"] == 2 and not failed.detail["passed"]
        assert failed.detail["server"] == url and failed.detail["candidate"]["n"] == EVAL_RECORDS
        assert promoted.action == "promote" and promoted.detail == {"evaluation_id": passed.id}
        base_fingerprint = r.resolve("codeword@2").base_fingerprint
        assert passed.detail["base_fingerprint"] == base_fingerprint is not None

    shown = runner.invoke(app, ["show", "codeword@3", "--registry", str(registry)],
                          env={"COLUMNS": "250"})
    assert f"eval #{failed.id}" in shown.stdout and "candidate for :prod (FAILED)" in shown.stdout
    logged = runner.invoke(app, ["log", "--name", "codeword", "--json", "--registry",
                                 str(registry)])
    actions = [e["action"] for e in json.loads(logged.stdout)]
    assert actions[:4] == ["evaluate", "promote", "alias_set", "evaluate"], actions
