"""README promises of the API, each through the real server (vLLM engine, real HTTP) and the real
`openai` client: `n`, `stop`, `top_logprobs`, `response_format: json_object`, streaming on
/v1/completions with and without usage, the admin scope on unload, and a DoRA adapter refused
end to end with its reason. All share the session's server (tests/server/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from loramux.demo.base_model import SPECIAL_TOKENS

pytestmark = pytest.mark.slow
HELLO = [{"role": "user", "content": "Hello!"}]
USER_KEY, ADMIN_KEY = "sk-user-test", "sk-admin-test"  # written to the keys file by conftest
PROMPT = "<|user|>\nTell me about Alice.<|end|>\n<|assistant|>\n"


def test_n_returns_n_distinct_choices(server) -> None:
    r = server.openai().chat.completions.create(model="rand-7", messages=HELLO, n=3,
                                                max_tokens=16, temperature=1.0, seed=11,
                                                logprobs=True)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert all(texts), texts
    # Three samples of 16 tokens at temperature 1 are the same only if `n` was not honoured
    # (one sample copied) or the seed was reused per choice.
    assert len(set(texts)) > 1, texts
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)


def test_stop_cuts_before_the_stop_string(server) -> None:
    client = server.openai()
    kw = dict(model="rand-8", messages=HELLO, max_tokens=24, temperature=0,
              extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**kw).choices[0].message.content
    assert len(full) >= 8, full
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = client.chat.completions.create(stop=[stop], **kw).choices[0]
    assert cut.message.content == full[:full.index(stop)], (full, stop)
    assert cut.finish_reason == "stop"


def test_top_logprobs_rank_the_alternatives(server) -> None:
    r = server.openai().chat.completions.create(model="rand-9", messages=HELLO, max_tokens=8,
                                                temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    # The text leaves out special tokens (the end of turn; a random adapter may also emit a
    # role marker); the logprobs list every token.
    listed = "".join(t.token for t in content)
    for special in SPECIAL_TOKENS:
        listed = listed.replace(special, "")
    assert listed == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3, t
        values = [alt.logprob for alt in t.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        # Greedy: the chosen token is the most likely one.
        assert t.top_logprobs[0].token == t.token
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob)


def json_prefix(text: str, base: Path) -> tuple[bool, bool]:
    """(whether ``text`` can begin a JSON document, whether it is one): xgrammar's built-in JSON
    grammar, compiled here for the base's tokenizer, not the server's grammar for the request."""
    import xgrammar as xgr
    from transformers import AutoTokenizer

    info = xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(base))
    matcher = xgr.GrammarMatcher(xgr.GrammarCompiler(info).compile_builtin_json_grammar())
    return matcher.accept_string(text), matcher.is_completed()


def test_response_format_json_object(server) -> None:
    """Every character follows JSON, whatever the finish reason: the demo base tends to open a
    key string and never close it, so an answer cut at `length` is checked as a JSON prefix, and
    one that stopped as a whole JSON object."""
    client = server.openai()
    kw = dict(model="demo-base", messages=HELLO, max_tokens=48, temperature=0)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    assert not json_prefix(plain, server.base)[0], f"the check needs a non-JSON answer: {plain}"
    r = client.chat.completions.create(response_format={"type": "json_object"}, **kw).choices[0]
    text = r.message.content
    prefix, complete = json_prefix(text, server.base)
    assert text.startswith("{") and prefix, text
    if r.finish_reason == "stop":
        assert complete and isinstance(json.loads(text), dict), text
    else:
        assert r.finish_reason == "length", r.finish_reason


def test_completions_stream_equals_whole_and_usage_only_on_request(server) -> None:
    client = server.openai()
    kw = dict(model="rand-4", prompt=PROMPT, max_tokens=12, temperature=0)
    whole = client.completions.create(**kw)
    plain = list(client.completions.create(stream=True, **kw))
    assert len(plain) > 2 and all(c.object == "text_completion" for c in plain)
    assert "".join(c.choices[0].text for c in plain) == whole.choices[0].text
    assert plain[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.usage is None for c in plain), "usage sent without include_usage"

    with_usage = list(client.completions.create(stream=True,
                                                stream_options={"include_usage": True}, **kw))
    assert "".join(c.choices[0].text for c in with_usage if c.choices) == whole.choices[0].text
    assert with_usage[-1].choices == [] and with_usage[-1].usage == whole.usage
    assert all(c.usage is None for c in with_usage[:-1])


def _post(server, path: str, body: dict, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=120)


def test_unload_needs_the_admin_scope(server) -> None:
    admin_load = _post(server, "/v1/adapters/load", {"model": "rand-5"}, ADMIN_KEY)
    assert admin_load.status_code == 200, admin_load.text
    refused = _post(server, "/v1/adapters/unload", {"model": "rand-5"}, USER_KEY)
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["type"] == "permission_error" and "admin" in error["message"]
    assert _post(server, "/v1/adapters/unload", {"model": "rand-5"}, None).status_code == 401
    cards = {m.id: m.model_dump() for m in server.openai().models.list().data}
    assert cards["rand-5@1"]["resident"] is True, "a refused unload must change nothing"
    done = _post(server, "/v1/adapters/unload", {"model": "rand-5"}, ADMIN_KEY)
    assert done.status_code == 200 and done.json()["unloaded"] is True, done.text
    cards = {m.id: m.model_dump() for m in server.openai().models.list().data}
    assert cards["rand-5@1"]["resident"] is False


def _dora_adapter(base: Path, out: Path) -> Path:
    """A real peft DoRA adapter for the demo base (magnitude vectors and all)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, use_dora=True,
                                                  target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(out)
    return out


def test_dora_adapter_is_refused_with_its_reason(server, tmp_path: Path) -> None:
    registry = server.registry()
    registry.push(_dora_adapter(server.base, tmp_path / "dora"), "dora-ad",
                  base_model=server.base)
    registry.close()
    with pytest.raises(openai.BadRequestError) as info:
        server.openai().chat.completions.create(model="dora-ad", messages=HELLO, max_tokens=2)
    assert info.value.status_code == 400
    error = info.value
    assert error.code == "incompatible_adapter" and error.type == "invalid_request_error"
    assert "adapter dora-ad@1 is a DoRA adapter, which vLLM cannot serve" in error.message
    assert "dora-ad@1" not in {m.id for m in server.openai().models.list().data}
    listed = httpx.get(f"{server.url}/v1/models", params={"include_refused": "true"},
                       headers={"Authorization": f"Bearer {USER_KEY}"}, timeout=30).json()
    card = next(c for c in listed["data"] if c["id"] == "dora-ad@1")
    assert "is a DoRA adapter" in card["refused"], card
