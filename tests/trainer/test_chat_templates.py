"""Assistant masks for chat templates without ``{% generation %}`` markers (chat_masks).

Every template TRL ships a marked training copy of is read from the installed package, its
markers swapped for no-op tags (the same text renders), and masked by loramux's rule; the mask
must equal the one transformers builds from the markers, token for token, except where a reason
below says why it cannot. TRL's original templates and hand-written ones (SmolLM2's ChatML with
a default system prompt, Mistral's ``[INST]``) are masked too: each assistant turn must be one
run of tokens holding its content and its end-of-turn text, and nothing of the other messages.
Tokenizer only (the demo base's byte-level BPE, with each template's special strings added).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import trl

from loramux.demo.base_model import CHAT_TEMPLATE as DEMO_TEMPLATE
from loramux.support.templates import SMOLLM2
from loramux.trainer.api import check_with_tokenizer, prepare_data
from loramux.trainer.chat_masks import (
    TemplateProblem,
    encode,
    render,
    require_fast,
    trl_masks_assistant,
)
from loramux.trainer.config import build_config
from loramux.trainer.errors import DataError, ModelError

TRL_DIR = Path(trl.__file__).parent / "chat_templates"
MARKER = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")
SPECIAL = re.compile(r"<\|[^<>'\"\s|]{1,40}\|?>|<[^<>'\"\s|/]{1,40}\|>"
                     r"|<\uff5c[^\uff5c]{1,40}\uff5c>|<(?:start|end)_of_[a-z_]+>|\[/?INST\]")

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}")

SYSTEM = {"role": "system", "content": "Answer in a few words."}
TURNS = [{"role": "user", "content": "What is the code word for the fox?"},
         {"role": "assistant", "content": "Olivia is the word."},
         {"role": "user", "content": "And the one for the owl?"},
         {"role": "assistant", "content": "Mason, surely."}]
OTHERS = ("code word for the fox", "one for the owl", "Answer in a few words")

# Templates loramux refuses, as (what the refusal says, why). Thinking templates whose generation
# prompt opens a think block that the conversation renders closed or not at all: the model would
# be trained on a prefix it is never served.
THINK_OPENED = ("not prefix-stable", "the generation prompt opens a think block ('<think>\\n') "
                "that the conversation renders closed or not at all")
VISION = ("renders this turn differently", "a vision template: it reads content as a list of "
          "typed parts, and text content renders as nothing")
REFUSED = {
    "deepseek_r1_distill": THINK_OPENED, "deepseekv3": THINK_OPENED,
    "nemotron_3_nano": THINK_OPENED, "nemotron_3_super": THINK_OPENED,
    "nemotron_3_ultra": THINK_OPENED, "nemotron_3_5_lightning": THINK_OPENED,
    "idefics3": VISION, "smolvlm": VISION,
    "llava_next": ("refuses this conversation", "a vision template: text content raises "
                   "('str object' has no attribute 'text')"),
}
ORIGINAL_REFUSED = {  # TRL patches these (its marked copies are tested as stripped ones)
    "qwen3": ("renders this turn differently", "only the last turn gets an empty think block"),
    "qwen3_5_nothink": THINK_OPENED, "qwen3_5_think": THINK_OPENED, "qwen3_6": THINK_OPENED,
}
NO_SYSTEM = {"mistral", "gemma"}  # the template raises for a system message

# TRL's markers open before the end of the generation prompt: it also labels prompt text the
# server sends (a header, a think opener), which loramux's rule leaves out by definition.
TRL_LABELS_PROMPT = {
    "qwen2_5": "the newline ending '<|im_start|>assistant'",
    "muse_glimmer": "'<|start|>assistant'",
    "gptoss": "'<|start|>assistant', and a history turn's '<|end|>' (the last turn ends "
              "'<|return|>'; loramux labels only text common to both)",
    "qwen3_5_nothink": "the empty think block", "qwen3_5_think": "'<think>\\n'",
    "qwen3_6": "'<think>\\n'", "qwen3_8": "'<think>\\n'",
}
EXTRA_TRL_TOKENS = {"gptoss": {"<|end|>"}}

# (what may precede the content in a turn's run, end of a history turn, end of the last turn)
SHAPES = {
    "cohere": ("", "<|END_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>"),
    "cohere2": ("", "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
                "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"),
    "diffusion_gemma": ("", "<turn|>\n", "<turn|>\n"),
    "gemma": ("", "<end_of_turn>\n", "<end_of_turn>\n"),
    "gemma4": ("", "<turn|>\n", "<turn|>\n"),
    "glm4moe": ("\n<think></think>\n", "<|user|>", "<|user|>"),  # GLM's stop: the next header
    # the original never writes that stop with the turn (TRL's copy appends it at the end)
    "trl:glm4moe": ("\n<think></think>\n", "", ""),
    "gptoss": ("<|channel|>final<|message|>", "", "<|return|>"),
    "lfm2": ("", "<|im_end|>\n", "<|im_end|>\n"),
    "llama3": ("", "<|eot_id|>", "<|eot_id|>"),
    "muse_glimmer": (" to=user<|message|>", "<|eot|>", "<|eot|>"),
    "phi3": ("", "<|end|>\n", "<|end|>\n</s>"),
    "qwen": ("", "<|im_end|>\n", "<|im_end|>\n"),
    "qwen3": ("<think>\n\n</think>\n\n", "<|im_end|>\n", "<|im_end|>\n"),  # generated
    "qwen3_instruct_2507": ("", "<|im_end|>\n", "<|im_end|>\n"),
    "qwen3_5_nothink": ("", "<|im_end|>\n", "<|im_end|>\n"),
    "qwen3_vl": ("", "<|im_end|>\n", "<|im_end|>\n"),
    "qwen3_5_think": ("\n</think>\n\n", "<|im_end|>\n", "<|im_end|>\n"),
    "qwen3_6": ("\n</think>\n\n", "<|im_end|>\n", "<|im_end|>\n"),
    "qwen3_8": ("\n</think>\n\n", "<|im_end|>\n", "<|im_end|>\n"),
    "smollm2": ("", "<|im_end|>\n", "<|im_end|>\n"),
    "mistral": ("", "</s>", "</s>"),
    "demo": ("", "<|end|>\n", "<|end|>\n"),
}


def _shape(source: str) -> tuple[str, str, str]:
    name = source.partition(":")[2]
    for key in (source, name):
        if key in SHAPES:
            return SHAPES[key]
    return SHAPES[max((k for k in SHAPES if name.startswith(k)), key=len)]


def _stripped(family: str) -> str:
    """TRL's marked template with each marker swapped for a no-op tag of the same whitespace
    control, so it renders the marked template's text and has no markers."""
    marked = (TRL_DIR / f"{family}_training.jinja").read_text(encoding="utf-8")
    return MARKER.sub(lambda m: "{%" + m[1] + (" endif " if m[2] else " if true ") + m[3]
                      + "%}", marked)


def _template(source: str) -> str:
    kind, _, name = source.partition(":")
    if kind == "stripped":
        return _stripped(name)
    if kind == "trl":
        return (TRL_DIR / f"{name}.jinja").read_text(encoding="utf-8")
    return {"smollm2": SMOLLM2, "mistral": MISTRAL, "demo": DEMO_TEMPLATE}[name]


@pytest.fixture(scope="module")
def demo_tokenizer(demo_base: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_base)


def _tokenizer_for(base, template: str):
    """A copy of the demo tokenizer on which the template's special strings are single tokens
    (``</s>`` the EOS, ``<s>`` the BOS, as most of these templates expect)."""
    tokenizer = copy.deepcopy(base)
    specials = sorted(set(SPECIAL.findall(template)) | {"</s>"})
    tokenizer.add_special_tokens({"eos_token": "</s>", "additional_special_tokens": specials},
                                 replace_extra_special_tokens=False)
    tokenizer.chat_template = template
    return tokenizer


FAMILIES = sorted(p.name.removesuffix("_training.jinja") for p in TRL_DIR.glob("*_training.jinja"))
ORIGINALS = sorted(p.stem for p in TRL_DIR.glob("*.jinja") if not p.stem.endswith("_training"))
SOURCES = ([f"stripped:{f}" for f in FAMILIES] + [f"trl:{o}" for o in ORIGINALS]
           + ["own:smollm2", "own:mistral", "own:demo"])


def _runs(mask: list[int]) -> list[range]:
    runs, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append(range(start, i))
            start = None
    return runs


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("with_system", [False, True], ids=["no-system", "system"])
def test_each_assistant_turn_is_one_run_of_its_own_text(demo_tokenizer, source: str,
                                                        with_system: bool) -> None:
    name = source.partition(":")[2]
    if with_system and name in NO_SYSTEM:
        pytest.skip("the template rejects a system message")
    messages = [SYSTEM, *TURNS] if with_system else TURNS
    tokenizer = _tokenizer_for(demo_tokenizer, _template(source))
    refused = REFUSED.get(name) or (ORIGINAL_REFUSED.get(name) if source.startswith("trl:")
                                    else None)
    if refused is not None:
        with pytest.raises(TemplateProblem, match=r"^(assistant turn 1: )?the chat template "
                           r"(is )?" + re.escape(refused[0])):
            encode(tokenizer, messages)
        return
    tokens = encode(tokenizer, messages)
    runs = _runs(tokens.assistant_masks)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(runs) == len(answers), [tokenizer.decode(tokens.input_ids[r.start:r.stop])
                                       for r in runs]
    before, history_end, last_end = _shape(source)
    for number, (run, answer) in enumerate(zip(runs, answers, strict=True), 1):
        text = tokenizer.decode(tokens.input_ids[run.start:run.stop])
        end = last_end if number == len(answers) else history_end
        assert text == before + answer + end, (number, text)
        assert not any(other in text for other in OTHERS)


@pytest.mark.parametrize("family", [
    pytest.param(f, marks=pytest.mark.skip(reason=f"loramux refuses it: {REFUSED[f][1]}"))
    if f in REFUSED else f for f in FAMILIES])
@pytest.mark.parametrize("with_system", [False, True], ids=["no-system", "system"])
def test_mask_equals_trls_from_the_marked_template(demo_tokenizer, family: str,
                                                   with_system: bool) -> None:
    if with_system and family in NO_SYSTEM:
        pytest.skip("the template rejects a system message")
    messages = [SYSTEM, *TURNS] if with_system else TURNS
    marked = (TRL_DIR / f"{family}_training.jinja").read_text(encoding="utf-8")
    tokenizer = _tokenizer_for(demo_tokenizer, marked)
    assert trl_masks_assistant(tokenizer)
    trl_out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
    tokenizer.chat_template = _stripped(family)
    assert not trl_masks_assistant(tokenizer), "stripped, TRL can neither use nor patch it"
    ours = encode(tokenizer, messages)
    assert ours.input_ids == list(trl_out["input_ids"]), "the same text, tokenized the same"
    theirs = list(trl_out["assistant_masks"])
    if family not in TRL_LABELS_PROMPT:
        assert ours.assistant_masks == theirs
        return
    # where they differ, TRL labels more: the generation prompt's own text (and, for gpt-oss,
    # the end a history turn has instead of the last turn's)
    assert all(t >= o for o, t in zip(ours.assistant_masks, theirs, strict=True))
    prompts = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            head = render(tokenizer, messages[:i], add_generation_prompt=True)
            bare = render(tokenizer, messages[:i])
            shared = next((k for k, (a, b) in enumerate(zip(head, bare, strict=False))
                           if a != b), min(len(head), len(bare)))
            prompts.append(range(shared, len(head)))
    enc = tokenizer(render(tokenizer, messages), add_special_tokens=False,
                    return_offsets_mapping=True)
    extra = [i for i, (o, t) in enumerate(zip(ours.assistant_masks, theirs, strict=True))
             if t and not o]
    assert extra, f"expected TRL to label {TRL_LABELS_PROMPT[family]}"
    for i in extra:
        start, _ = enc["offset_mapping"][i]
        piece = tokenizer.decode([enc["input_ids"][i]])
        assert any(start in p for p in prompts) or piece in EXTRA_TRL_TOKENS.get(family, ()), \
            (i, piece)


def test_routes_marked_and_patchable_templates_to_trl(demo_tokenizer) -> None:
    assert trl_masks_assistant(_tokenizer_for(demo_tokenizer, DEMO_TEMPLATE))
    assert trl_masks_assistant(_tokenizer_for(demo_tokenizer, _template("trl:qwen2_5")))
    assert not trl_masks_assistant(_tokenizer_for(demo_tokenizer, SMOLLM2))
    assert not trl_masks_assistant(_tokenizer_for(demo_tokenizer, MISTRAL))


def test_a_slow_tokenizer_is_refused_clearly() -> None:
    class Slow:
        is_fast = False

    with pytest.raises(ModelError, match=r"slow \(Python\) tokenizer.*needs a fast one"):
        require_fast(Slow(), "some/base")


# -- the data check, before training ---------------------------------------------------------

UNSTABLE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|bot|>' }}{% else %}"
            "{{ '<|' + m['role'] + '|>' }}{% endif %}{{ m['content'] + '<|end|>' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def _check(tmp_path: Path, demo_base: Path, tokenizer, records: list[list[dict]], **options):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in records))
    config = build_config(None, {"base": str(demo_base), "data": data, "out": tmp_path / "o",
                                 "evaluate": False, **options})
    prepared = prepare_data(config)
    check_with_tokenizer(config, prepared, tokenizer)
    return data, prepared


def test_a_template_that_is_not_prefix_stable_is_refused_naming_record_and_turn(
        demo_base: Path, demo_tokenizer, tmp_path: Path) -> None:
    tokenizer = _tokenizer_for(demo_tokenizer, UNSTABLE)
    with pytest.raises(DataError) as refused:
        _check(tmp_path, demo_base, tokenizer, [TURNS, [SYSTEM, *TURNS]])
    data = tmp_path / "train.jsonl"
    assert refused.value.problems[0].startswith(f"{data}:1: assistant turn 1: the chat "
                                                "template is not prefix-stable")
    assert refused.value.problems[1].startswith(f"{data}:2: assistant turn 1:")
    assert "do not fit the chat template" in str(refused.value)


def test_records_the_template_rejects_are_listed_or_skipped(demo_base: Path, demo_tokenizer,
                                                            tmp_path: Path) -> None:
    tokenizer = _tokenizer_for(demo_tokenizer, MISTRAL)
    twice = [TURNS[0], TURNS[0], TURNS[1]]
    records = [TURNS, [SYSTEM, *TURNS], twice, TURNS[:2]]
    with pytest.raises(DataError) as refused:
        _check(tmp_path, demo_base, tokenizer, records)
    data = tmp_path / "train.jsonl"
    alternate = ("the chat template refuses this conversation: Conversation roles must "
                 "alternate user/assistant/user/assistant/...")
    assert refused.value.problems == [f"{data}:2: {alternate}", f"{data}:3: {alternate}"]

    _, prepared = _check(tmp_path, demo_base, tokenizer, records, skip_bad_records=True)
    assert [e.where for e in prepared.train] == [f"{data}:1", f"{data}:4"]
    assert prepared.skipped == refused.value.problems
    assert prepared.chat_tokens is not None and set(prepared.chat_tokens) == {
        f"{data}:1", f"{data}:4"}
    row = prepared.rows(prepared.train, None)[0]
    assert set(row) == {"input_ids", "assistant_masks"}
    assert prepared.train_tokens == sum(len(t.input_ids) for t in prepared.chat_tokens.values())


def test_a_marked_template_stays_on_trls_path(demo_base: Path, demo_tokenizer,
                                              tmp_path: Path) -> None:
    _, prepared = _check(tmp_path, demo_base, demo_tokenizer, [TURNS])
    assert prepared.chat_tokens is None
    assert prepared.rows(prepared.train, None) == [{"messages": TURNS}]
