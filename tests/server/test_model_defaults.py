"""The base model's generation config, read from its files: every end id, and sampling defaults
that fill only what a request leaves unset (then OpenAI's). Fast: the files are written by the
test, and the handler runs in the live app over real HTTP with the real `openai` client and a
fake engine that records the `Sampling` each request reached it with. The same behaviours with
the real engines: tests/server/test_model_facts.py."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from loramux.server.engines.base import GenerationRequest, Sampling
from loramux.server.model_defaults import ModelDefaults, describe, read_model_defaults
from loramux.server.settings import ServerSettings

sys.path.insert(0, str(Path(__file__).parent))
from fake_engine import FakeEngine, LiveServer, build_runtime

HELLO = [{"role": "user", "content": "Hello!"}]
MODEL = {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}


def _folder(tmp_path: Path, generation: dict | None, config: dict | None = None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    if generation is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"} | (config or {})))
    return folder


def test_reads_every_end_id_and_the_sampling_values_the_model_sets(tmp_path: Path,
                                                                    caplog) -> None:
    folder = _folder(tmp_path, {"eos_token_id": [2, 7], "do_sample": False, "min_p": 3.0,
                                "bos_token_id": 1} | MODEL)
    with caplog.at_level(logging.WARNING):
        defaults = read_model_defaults(folder, eos_token_id=3)
    assert defaults.end_token_ids == {2, 3, 7}
    assert dict(defaults.sampling) == MODEL, "min_p=3 is out of range; do_sample is not used"
    assert "min_p=3.0" in caplog.text
    assert "overridden by the model's Hugging Face generation config" in describe(defaults)


def test_without_generation_config_json_the_model_config_speaks(tmp_path: Path) -> None:
    """As vLLM reads it: no generation_config.json, then config.json's generation fields."""
    defaults = read_model_defaults(_folder(tmp_path, None, {"eos_token_id": [5, 6]}), 5)
    assert defaults.end_token_ids == {5, 6}
    assert not defaults.sampling
    assert "sampling defaults are OpenAI's" in describe(defaults)


@pytest.mark.parametrize(("requested", "model", "expected"), [
    ({}, {}, (1.0, 1.0, 0)),
    ({}, MODEL, (0.2, 0.9, 40)),
    ({"temperature": 1.0}, MODEL, (1.0, 0.9, 40)),
    ({"temperature": 0.0, "top_p": 1.0}, MODEL, (0.0, 1.0, 40)),
    ({"temperature": None}, {"top_k": -1}, (1.0, 1.0, 0)),
])
def test_request_then_model_then_openai(requested: dict, model: dict, expected: tuple) -> None:
    got = ModelDefaults(frozenset(), model).resolve(**requested)
    assert (got["temperature"], got["top_p"], got["top_k"]) == expected


class RecordingEngine(FakeEngine):
    """The fake engine, keeping the Sampling of each request it is asked to generate."""

    def __init__(self) -> None:
        super().__init__()
        self.sampling: list[Sampling] = []

    async def generate(self, request: GenerationRequest):
        self.sampling.append(request.sampling)
        async for delta in super().generate(request):
            yield delta


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A live server whose base's generation config sets MODEL; yields (openai client, engine)."""
    from openai import OpenAI

    from loramux.server.app import create_app

    root = tmp_path_factory.mktemp("defaults")
    engine = RecordingEngine()
    runtime = build_runtime(ServerSettings.from_sources({"base": "fake-base"}, environ={}),
                            root / "registry", root / "cache", engine=engine)
    runtime.handlers.defaults = ModelDefaults(frozenset({1}), MODEL)
    with LiveServer(create_app(runtime)) as url:
        yield OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0), engine
    runtime.close()


@pytest.mark.parametrize(("sent", "expected"), [
    ({}, {"temperature": 0.2, "top_p": 0.9}),
    ({"temperature": 1.0}, {"temperature": 1.0, "top_p": 0.9}),
    ({"temperature": 0, "top_p": 1.0}, {"temperature": 0.0, "top_p": 1.0}),
    ({"extra_body": {"temperature": None}}, {"temperature": 0.2, "top_p": 0.9}),
])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_the_engine_gets_the_models_defaults_only_where_the_request_is_silent(
        live, endpoint: str, sent: dict, expected: dict) -> None:
    client, engine = live
    if endpoint == "chat":
        client.chat.completions.create(model="fake-base", messages=HELLO, max_tokens=2, **sent)
    else:
        client.completions.create(model="fake-base", prompt="Hi", max_tokens=2, **sent)
    s = engine.sampling[-1]
    assert {"temperature": s.temperature, "top_p": s.top_p} == expected
    # The request sets none of these: the model's values, else the neutral ones.
    assert (s.top_k, s.min_p, s.repetition_penalty) == (40, 0.0, 1.1)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_requests_repetition_penalty_wins_over_the_models(live, endpoint: str) -> None:
    """vLLM's load generator sends repetition_penalty 1.0 on every completion request: it is
    served (it used to be a 400), and applied, as on vLLM's own server."""
    client, engine = live
    for sent in (1.0, 1.3):
        extra = {"extra_body": {"repetition_penalty": sent}}
        if endpoint == "chat":
            client.chat.completions.create(model="fake-base", messages=HELLO, max_tokens=2,
                                           **extra)
        else:
            client.completions.create(model="fake-base", prompt="Hi", max_tokens=2, **extra)
        assert engine.sampling[-1].repetition_penalty == sent


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_requests_top_k_and_min_p_win_over_the_models(live, endpoint: str) -> None:
    """What vLLM's server takes (and its load generator and many clients send): both engines
    apply them; -1 and 0 both mean every token."""
    client, engine = live
    for sent, top_k in (({"top_k": -1, "min_p": 0}, 0), ({"top_k": 5, "min_p": 0.25}, 5)):
        extra = {"extra_body": sent}
        if endpoint == "chat":
            client.chat.completions.create(model="fake-base", messages=HELLO, max_tokens=2,
                                           **extra)
        else:
            client.completions.create(model="fake-base", prompt="Hi", max_tokens=2, **extra)
        assert (engine.sampling[-1].top_k, engine.sampling[-1].min_p) == (top_k, sent["min_p"])


@pytest.mark.parametrize("field", ["presence_penalty", "frequency_penalty"])
def test_the_reference_engine_refuses_a_penalty_it_does_not_apply_by_name(
        live, field: str) -> None:
    """OpenAI's penalties have no processor in transformers: 0 passes, anything else is an
    OpenAI-shaped 400 that names the field and the engine, and reaches no engine."""
    import openai

    client, engine = live
    name = engine.info.name
    engine.info.name = "transformers"
    try:
        client.completions.create(model="fake-base", prompt="Hi", max_tokens=2,
                                  extra_body={field: 0})
        served = len(engine.sampling)
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="fake-base", messages=HELLO, max_tokens=2,
                                           extra_body={field: 0.5})
    finally:
        engine.info.name = name
    error = refused.value.body
    assert (error["param"], error["code"]) == (field, "unsupported_parameter"), error
    assert "transformers engine" in error["message"], error
    assert len(engine.sampling) == served, "the refused request reached the engine"
