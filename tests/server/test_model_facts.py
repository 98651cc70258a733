"""A base model's own files decide where answers end, how requests that name no sampling values
sample, and which system prompt a chat without one gets, in both engines: `loramux serve` with
vLLM and with the reference engine, real HTTP, the real `openai` client.

The base is a copy of the demo base with three facts of a real chat model (SmolLM2-Instruct
style): a generation config that lists a second end id (a token the base really says early in
its greedy answer, chosen by generating first) and sets `temperature: 0` (with `do_sample: true`,
so greedy answers can only come from the temperature), and a chat template that puts in a default
system prompt when a chat has none. One server per engine for the module, started together."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from loramux.demo.base_model import CHAT_TEMPLATE
from loramux.support.launch import ServerProcess

pytestmark = pytest.mark.slow
ASK = [{"role": "user", "content": "How many words are in: cat dog fox"}]
DEFAULT_SYSTEM = "You are a friendly assistant."  # one the demo base saw in pretraining
# The template of the demo base, after a default system turn when the chat opens without one.
TEMPLATE = ("{%- if messages[0]['role'] != 'system' -%}{{ '<|system|>\\n" + DEFAULT_SYSTEM
            + "<|end|>\\n' }}{%- endif -%}" + CHAT_TEMPLATE)
# The extra end id is a token of the greedy answer whose every step up to it led by this many
# nats: vLLM's bf16 kernels then choose the same tokens as transformers'.
MARGIN = 0.5


@dataclass(frozen=True)
class Variant:
    path: Path
    greedy: list[int]  # the greedy answer's first tokens, before any extra end id existed
    end_at: int  # index in `greedy` of the extra end id
    eos: int

    @property
    def extra_end(self) -> int:
        return self.greedy[self.end_at]


def _greedy_with_margins(model_dir: Path, ids: list[int], steps: int) -> list[tuple[int, float]]:
    """(token, lead over the runner-up in nats) of each greedy step, as the reference engine
    computes them (bf16, no quantization)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=steps,
                             do_sample=False, eos_token_id=None, output_logits=True,
                             return_dict_in_generate=True)
    result = []
    for step, token in enumerate(out.sequences[0, len(ids):].tolist()):
        top = torch.topk(torch.log_softmax(out.logits[step][0].float(), -1), 2).values
        result.append((token, float(top[0] - top[1])))
    return result


def _make_variant(base: Path, out: Path) -> Variant:
    from transformers import AutoTokenizer

    shutil.copytree(base, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)  # transformers 5 keeps it in chat_template.jinja
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    (out / "chat_template.jinja").write_text(TEMPLATE)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template(ASK, add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    steps = _greedy_with_margins(out, list(ids), 8)
    special = set(tok.all_special_ids)
    end_at = None
    for i, (token, _) in enumerate(steps):
        if token in special or steps[i][1] < MARGIN:
            break  # past here the engines may part, or the answer has ended
        if i >= 1 and token not in [t for t, _ in steps[:i]]:
            end_at = i
            break
    assert end_at is not None, f"no clear early token in the greedy answer: {steps}"
    generation = json.loads((out / "generation_config.json").read_text())
    generation |= {"eos_token_id": [tok.eos_token_id, steps[end_at][0]], "do_sample": True,
                   "temperature": 0.0, "top_p": 0.9}
    (out / "generation_config.json").write_text(json.dumps(generation))
    return Variant(out, [t for t, _ in steps], end_at, tok.eos_token_id)


@pytest.fixture(scope="module")
def variant(demo_base: Path, tmp_path_factory) -> Variant:
    return _make_variant(demo_base, tmp_path_factory.mktemp("facts") / "facts-base")


@pytest.fixture(scope="module")
def servers(variant: Variant, tmp_path_factory):
    """engine name -> (openai client, server log): both started at the same time."""
    from openai import OpenAI

    import loramux.registry as reg

    root = tmp_path_factory.mktemp("facts-servers")
    reg.open(root / "registry").close()
    processes = {engine: ServerProcess(
        ["--base", str(variant.path), "--engine", engine, "--quantization", "none",
         "--registry", str(root / "registry"), "--cache-dir", str(root / f"cache-{engine}"),
         "--max-model-len", "512"], log=root / f"{engine}.log")
        for engine in ("vllm", "transformers")}
    try:
        with ThreadPoolExecutor(2) as pool:
            urls = dict(zip(processes, pool.map(lambda p: p.start(), processes.values()),
                            strict=True))
        yield {engine: (OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                               timeout=300), processes[engine].log)
               for engine, url in urls.items()}
    finally:
        for process in processes.values():
            process.stop()


ENGINES = ["vllm", "transformers"]


@pytest.mark.parametrize("engine", ENGINES)
def test_generation_stops_at_every_end_id(servers, variant: Variant, engine: str) -> None:
    from transformers import AutoTokenizer

    client, _ = servers[engine]
    tok = AutoTokenizer.from_pretrained(variant.path)
    kw = dict(model="facts-base", messages=ASK, max_tokens=8, temperature=0)
    r = client.chat.completions.create(**kw)
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice
    assert r.usage.completion_tokens == variant.end_at + 1, "the end token counts, as vLLM's"
    assert choice.message.content == tok.decode(variant.greedy[:variant.end_at]), \
        "the answer up to the extra end id, which is not shown"
    # Without end ids (ignore_eos) the same answer goes on through that token.
    on = client.chat.completions.create(**kw, extra_body={"ignore_eos": True})
    assert on.choices[0].finish_reason == "length"
    assert on.choices[0].message.content.startswith(
        tok.decode(variant.greedy[:variant.end_at + 1]))


@pytest.mark.parametrize("engine", ENGINES)
def test_model_default_temperature_applies_only_when_the_request_has_none(
        servers, engine: str) -> None:
    client, log = servers[engine]
    kw = dict(model="facts-base", messages=ASK, max_tokens=16,
              extra_body={"ignore_eos": True})
    greedy = client.chat.completions.create(**kw, temperature=0).choices[0].message.content
    unset = [client.chat.completions.create(**kw, seed=s).choices[0].message.content
             for s in (1, 2)]
    assert unset == [greedy, greedy], "no temperature: the model's 0, greedy whatever the seed"
    hot = [client.chat.completions.create(**kw, seed=s, temperature=1.0).choices[0]
           .message.content for s in (1, 2)]
    assert len({greedy, *hot}) == 3, f"an explicit temperature wins: {hot} vs {greedy!r}"
    text = log.read_text(errors="replace")
    assert text.count("overridden by the model's Hugging Face generation config") == 1, \
        "the model's defaults are logged once, at start"


@pytest.mark.parametrize("engine", ENGINES)
def test_default_system_prompt_of_the_template_reaches_the_engine(
        servers, variant: Variant, demo_base: Path, engine: str) -> None:
    from transformers import AutoTokenizer

    client, _ = servers[engine]
    plain = len(AutoTokenizer.from_pretrained(demo_base).apply_chat_template(
        ASK, add_generation_prompt=True, tokenize=True, return_dict=False))
    with_default = len(AutoTokenizer.from_pretrained(variant.path).apply_chat_template(
        ASK, add_generation_prompt=True, tokenize=True, return_dict=False))
    kw = dict(model="facts-base", max_tokens=6, temperature=0,
              extra_body={"ignore_eos": True})
    none = client.chat.completions.create(messages=ASK, **kw)
    spelled = client.chat.completions.create(
        messages=[{"role": "system", "content": DEFAULT_SYSTEM}, *ASK], **kw)
    assert none.usage.prompt_tokens == with_default > plain
    assert spelled.usage.prompt_tokens == with_default, "a chat's own system turn replaces it"
    assert none.choices[0].message.content == spelled.choices[0].message.content, \
        "the engine saw the same prompt with the default system prompt as with it spelled out"
