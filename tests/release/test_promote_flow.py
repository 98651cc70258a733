"""`loramux registry promote` end to end, fast: the real CLI, the real `loramux serve` app over
HTTP on loopback, the real openai client and a real registry (a folder, and a registry server);
only the engine is a fake, one whose answers depend on which adapter digest it runs, so that
each version has a known exact-match score on the eval set. The real engine: test_promote_e2e.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import loramux.registry as reg
from loramux.cli import registry_app as app  # with release's verbs mounted
from loramux.server.app import create_app
from loramux.server.engines.base import Delta
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
from fake_engine import FakeEngine, LiveServer, build_runtime

BASE = "fake-base"
SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
QUESTIONS = 10
KNOWS = {1: 6, 2: 9, 3: 4}  # version -> how many of the questions it answers right
runner = CliRunner()


class TutorEngine(FakeEngine):
    """Answers question ``q<i>`` with ``a<i>`` when the adapter it runs knows it (the first
    ``knows[digest]`` questions), else with a wrong answer. ``before`` runs once, on the first
    request for ``before_digest`` (a test's way to act while the gate is measuring)."""

    def __init__(self) -> None:
        super().__init__()
        self.knows: dict[str, int] = {}
        self.before_digest: str | None = None
        self.before = lambda: None

    async def generate(self, request):
        digest = request.adapter.digest if request.adapter else None
        self.served.append(digest)
        if digest is not None and digest == self.before_digest:
            self.before_digest = None
            self.before()
        prompt = "".join(chr(t) for t in request.prompt_token_ids)
        i = int(prompt.rsplit("<user>q", 1)[1])
        answer = f"a{i}" if i < self.knows.get(digest or "", 0) else "no idea"
        yield Delta(0, answer, [1], "stop")


class Stack:
    def __init__(self, root: Path, url: str, engine: TutorEngine,
                 versions: dict[int, reg.Manifest]) -> None:
        self.root, self.url, self.engine, self.versions = root, url, engine, versions
        self.eval_file = root / "eval.jsonl"
        self.eval_file.write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})
            + "\n" for i in range(QUESTIONS)))

    def promote(self, ref: str, *args: str, registry: str | None = None):
        return runner.invoke(app, ["promote", ref, "--alias", "prod", "--eval",
                                   str(self.eval_file), "--server", self.url,
                                   "--registry", registry or str(self.root / "registry"), *args])

    def registry(self) -> reg.Registry:
        return reg.open(self.root / "registry")

    def prod(self) -> int:
        with self.registry() as r:
            return r.resolve("helper:prod").version


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    registry = reg.open(tmp_path / "registry")
    versions = {v: registry.push(write_adapter(tmp_path / f"v{v}", SHAPES, rank=2, seed=v),
                                 "helper") for v in KNOWS}
    registry.alias_set("helper", "prod", 1)
    registry.close()
    engine = TutorEngine()
    engine.knows = {versions[v].digest: k for v, k in KNOWS.items()}
    settings = ServerSettings.from_sources({"base": BASE, "resolve_ttl_s": 0}, environ={})
    runtime = build_runtime(settings, tmp_path / "registry", tmp_path / "cache", engine)
    with LiveServer(create_app(runtime)) as url:
        yield Stack(tmp_path, url, engine, versions)
    runtime.close()


def test_a_better_version_is_promoted_a_worse_one_refused(stack: Stack) -> None:
    r = stack.promote("helper@2", "--min-exact", "0.5")
    assert r.exit_code == 0, r.output
    assert "promoted helper@2 to helper:prod (was @1): scored 0.900 (exact 0.900) vs current " \
           "0.600 (exact 0.600) on 10 records" in r.stdout
    assert stack.prod() == 2
    # both versions ran every prompt, pinned (the engine saw each digest ten times)
    assert sorted(stack.engine.served) == sorted([stack.versions[1].digest] * 10
                                                 + [stack.versions[2].digest] * 10)

    r = stack.promote("helper@3", "--min-exact", "0.3")
    assert r.exit_code == 10, r.output
    line = r.stderr.strip()
    assert line.startswith("error: gate failed: helper@3 scored 0.400 (exact 0.400) vs current "
                           "0.900 (exact 0.900) on 10 records, scorer exact; score 0.400 is "
                           "worse than the current 0.900"), line
    assert line.endswith("helper:prod stays at helper@2") and "\n" not in line
    assert stack.prod() == 2

    with stack.registry() as registry:
        failed, promote, _, passed = registry.log(name="helper", limit=4)
        assert (failed.action, failed.detail["passed"], failed.detail["candidate"]["version"]) \
            == ("evaluate", False, 3)
        assert failed.detail["current"] == {"version": 2, "digest": stack.versions[2].digest,
                                            "score": 0.9, "exact": 0.9, "n": 10}
        assert failed.detail["server"] == stack.url and failed.detail["threshold"] == 0.3
        assert failed.detail["eval_digest"].startswith("sha256:")
        assert (promote.action, promote.detail) == ("promote", {"evaluation_id": passed.id})
        assert [e.evaluation.passed for e in registry.evaluations("helper", 2)] == [False, True]
    shown = runner.invoke(app, ["show", "helper@3", "--registry", str(stack.root / "registry")],
                          env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert f"eval #{failed.id}" in shown.stdout
    assert "candidate for :prod (FAILED): exact 0.400 (exact 0.400) vs @2 0.900" in shown.stdout


def test_max_regression_and_threshold(stack: Stack) -> None:
    # 0.4 against 0.6: 0.2 worse; allowed 0.25 passes, allowed 0.1 does not
    r = stack.promote("helper@3", "--min-exact", "0.3", "--max-regression", "0.1")
    assert r.exit_code == 10 and stack.prod() == 1, r.output
    r = stack.promote("helper@2", "--min-exact", "0.95")  # better than current, under the bar
    assert r.exit_code == 10 and "below the threshold 0.950" in r.stderr and stack.prod() == 1
    r = stack.promote("helper@3", "--min-score", "0.3", "--scorer", "contains",
                      "--max-regression", "0.25", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["promoted"], out["scorer"], out["candidate"]["score"]) == (True, "contains", 0.4)
    assert stack.prod() == 3
    r = stack.promote("helper@3", "--min-exact", "0.3")
    assert r.exit_code == 0 and "already points at helper@3; nothing to do" in r.stdout


def test_the_alias_moved_while_measuring(stack: Stack) -> None:
    """Someone points prod at v3 while the gate measures v2 against v1: no promotion."""
    def move() -> None:
        with stack.registry() as registry:
            registry.alias_set("helper", "prod", 3)

    stack.engine.before_digest, stack.engine.before = stack.versions[2].digest, move
    r = stack.promote("helper@2", "--min-exact", "0.5")
    assert r.exit_code == 4, r.output
    assert r.stderr.strip() == ("error: helper:prod moved to helper@3 while the gate compared "
                                "with helper@1: not promoted; run the gate again")
    assert stack.prod() == 3


def test_through_a_registry_server(stack: Stack, http_server) -> None:
    """`--registry http://…`: recording and the move go over HTTP (write token)."""
    from registry_support import READ_TOKEN, WRITE_TOKEN

    store = reg.LocalRegistry(stack.root / "registry")
    http_server.use(store)
    try:
        r = stack.promote("helper@2", "--min-exact", "0.5", "--registry", http_server.url,
                          "--token", READ_TOKEN)
        assert r.exit_code == 8 and "'write' scope" in r.stderr, r.output  # measured, refused
        assert stack.prod() == 1
        r = stack.promote("helper@2", "--min-exact", "0.5", "--registry", http_server.url,
                          "--token", WRITE_TOKEN)
        assert r.exit_code == 0, r.output
        assert stack.prod() == 2
        shown = runner.invoke(app, ["show", "helper@2", "--registry", http_server.url,
                                    "--token", READ_TOKEN], env={"COLUMNS": "250"})
        assert "candidate for :prod (passed): exact 0.900" in shown.stdout, shown.output
    finally:
        store.close()


def test_errors_are_one_line(stack: Stack, tmp_path: Path) -> None:
    cases = [
        (["helper:prod", "--min-exact", "0.5"], 5, "promote needs an exact version"),
        (["helper@9", "--min-exact", "0.5"], 3, "helper@9 does not exist"),
        (["helper@2"], 5, "give one threshold"),
        (["helper@2", "--min-score", "0.5", "--scorer", "nope:nothing"], 5,
         "cannot import nope"),
    ]
    for args, code, message in cases:
        r = stack.promote(*args)
        assert r.exit_code == code and message in r.stderr, (args, r.output)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    r = runner.invoke(app, ["promote", "helper@2", "--alias", "prod", "--eval", str(bad),
                            "--server", stack.url, "--min-exact", "0.5",
                            "--registry", str(stack.root / "registry")])
    assert r.exit_code == 5 and "bad.jsonl:1:" in r.stderr, r.output
    # a server that reads another registry answers with other digests: nothing is recorded
    other = reg.open(tmp_path / "other")
    for v in KNOWS:
        other.push(write_adapter(tmp_path / f"o{v}", SHAPES, rank=2, seed=100 + v), "helper")
    other.alias_set("helper", "prod", 1)
    other.close()
    r = stack.promote("helper@2", "--min-exact", "0.5", registry=str(tmp_path / "other"))
    assert r.exit_code == 11 and "does it read this registry?" in r.stderr, r.output
    r = stack.promote("helper@2", "--min-exact", "0.5", "--server", "http://127.0.0.1:9")
    assert r.exit_code == 11 and "unreachable" in r.stderr, r.output
    with stack.registry() as registry:
        assert registry.evaluations("helper", 2) == [] and stack.prod() == 1
