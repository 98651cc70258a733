"""Assistant-only loss for any chat template: which tokens of a rendered chat are the assistant's.

TRL finds the assistant's tokens through ``{% generation %}`` markers in the chat template, or
through a marked copy of the few templates it knows string for string. Most templates have
neither (SmolLM2's ChatML with its default system prompt, Mistral's ``[INST]``, any edited
fine-tune template), so for those the records are tokenized here and TRL gets ``input_ids`` with
an ``assistant_masks`` column, which it turns into labels exactly as for a marked template.

The rule needs nothing from the template but that it be *prefix-stable*: the conversation before
an assistant turn, rendered with the generation prompt (``A``, what the server sends the model),
is the start of the whole rendered conversation (``full``). The turn's labelled text is then what
follows ``A`` in ``full`` for as long as it agrees with the conversation rendered up to and
including that turn (``B``): its content, its end-of-turn token and whatever else the template
writes with it, such as an EOS after the last turn. A record that breaks the rule is refused,
naming the record and the turn, rather than trained on a guessed mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loramux.trainer.data import Example
from loramux.trainer.errors import ModelError


class TemplateProblem(ValueError):
    """One record's conversation cannot be rendered or masked with the chat template."""


@dataclass(frozen=True)
class Turn:
    """An assistant turn's characters in the rendered chat; its content ends at ``content_end``."""

    start: int
    end: int
    content_end: int


@dataclass(frozen=True)
class ChatTokens:
    """A tokenized chat record: the ids TRL trains on and 1 where the loss counts."""

    input_ids: list[int]
    assistant_masks: list[int]

    def row(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "assistant_masks": self.assistant_masks}


def trl_masks_assistant(tokenizer) -> bool:
    """Whether TRL can mask the assistant turns itself: the template has ``{% generation %}``
    markers, or is one TRL swaps for a marked copy of its own (kept: that is TRL's tested fix
    for templates such as Qwen3's, which render the last turn unlike earlier ones)."""
    from jinja2 import TemplateError
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return True
    try:
        get_training_chat_template(tokenizer)
    except (ValueError, TypeError, TemplateError):  # "patching is not supported", or its probes
        return False
    return True


def require_fast(tokenizer, base: str) -> None:
    """Character spans become tokens through the fast tokenizer's offsets (as in transformers)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"the tokenizer of {base} is a slow (Python) tokenizer: finding the assistant's "
            "tokens in a chat template without {% generation %} markers needs a fast one "
            "(tokenizer.json); add the markers to the chat template or convert the tokenizer")


def render(tokenizer, messages: Sequence[dict[str, Any]], *,
           add_generation_prompt: bool = False) -> str:
    """The model's own template with the arguments TRL uses (no tools, no extra kwargs)."""
    if messages:
        return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    # apply_chat_template refuses an empty conversation; a leading assistant turn's prompt is
    # whatever the template writes before any message (a BOS, say)
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[[]], chat_template=tokenizer.get_chat_template(),
        add_generation_prompt=add_generation_prompt, **tokenizer.special_tokens_map)
    return rendered[0]


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def assistant_turns(tokenizer, messages: Sequence[dict[str, Any]]) -> tuple[str, list[Turn]]:
    """(full rendered chat, each assistant turn's characters in it); TemplateProblem if the
    template refuses the conversation or is not prefix-stable for it."""
    from jinja2 import TemplateError

    try:
        full = render(tokenizer, messages)
        turns = []
        for number, i in enumerate(
                (i for i, m in enumerate(messages) if m["role"] == "assistant"), 1):
            before = render(tokenizer, messages[:i], add_generation_prompt=True)
            if not full.startswith(before):
                at = _common_prefix(before, full)
                raise TemplateProblem(
                    f"assistant turn {number}: the chat template is not prefix-stable: the "
                    f"prompt for this turn goes on {before[at:at + 24]!r} where the whole "
                    f"conversation has {full[at:at + 24]!r}, so training would not see what "
                    "the model is served; add {% generation %} markers to the template")
            upto = render(tokenizer, messages[: i + 1])
            start = len(before)
            end = start + _common_prefix(upto[start:], full[start:])
            content = messages[i]["content"].strip()  # templates often trim it
            found = full.find(content, start, end)
            if found < 0:
                raise TemplateProblem(
                    f"assistant turn {number}: the chat template renders this turn differently "
                    "when it ends the conversation than inside it (the text it adds does not "
                    "hold the message), so its tokens cannot be told apart; add "
                    "{% generation %} markers to the template")
            turns.append(Turn(start, end, found + len(content)))
    except (TemplateError, TypeError) as exc:
        raise TemplateProblem(f"the chat template refuses this conversation: {exc}") from None
    return full, turns


def _end_on_token(enc, turn: Turn) -> int:
    """The turn's end, moved back to a token boundary when the token holding its last character
    begins after the content and runs past the turn: the turn's text and the next message's
    can share first characters (Phi-3's ``<|endoftext|>`` and ``<|user|>`` both start ``<|``)."""
    last = enc.char_to_token(turn.end - 1)
    chars = enc.token_to_chars(last) if last is not None else None
    if chars is not None and chars.end > turn.end and chars.start >= turn.content_end:
        return chars.start
    return turn.end


def encode(tokenizer, messages: Sequence[dict[str, Any]]) -> ChatTokens:
    """Token ids of the rendered chat and its assistant mask, the way transformers builds one
    from ``{% generation %}`` spans: every token from the one holding a span's first character
    to the one holding its last (``char_to_token``), on the text tokenized once, with no
    special tokens added (as ``apply_chat_template(tokenize=True)`` does)."""
    full, turns = assistant_turns(tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False)
    ids = list(enc["input_ids"])
    mask = [0] * len(ids)
    for turn in turns:
        first, last = enc.char_to_token(turn.start), enc.char_to_token(_end_on_token(enc, turn) - 1)
        if first is None:  # as in transformers: a span past the tokens ends the marking
            break
        for t in range(first, last + 1 if last else len(ids)):
            mask[t] = 1
    return ChatTokens(ids, mask)


def check_renders(tokenizer, messages: Sequence[dict[str, Any]]) -> None:
    """TemplateProblem unless the template renders the conversation (TRL's own path)."""
    from jinja2 import TemplateError

    try:
        render(tokenizer, messages)
    except (TemplateError, TypeError) as exc:
        raise TemplateProblem(f"the chat template refuses this conversation: {exc}") from None


def fit_template(examples: Sequence[Example], tokenizer, *, own_masks: bool,
                 ) -> tuple[list[Example], list[str], dict[str, ChatTokens]]:
    """(kept, one ``where: problem`` line per refused record, tokens by ``where``).

    Every record that goes through the chat template is rendered once here, before the model
    loads, so a template that raises (Mistral's "roles must alternate") names the record; with
    ``own_masks`` chat records are also tokenized and masked, for TRL to use as they are.
    """
    kept: list[Example] = []
    problems: list[str] = []
    tokens: dict[str, ChatTokens] = {}
    for example in examples:
        try:
            if own_masks and example.messages is not None:
                tokens[example.where] = encode(tokenizer, example.messages)
            else:
                check_renders(tokenizer, example.chat_view())
        except TemplateProblem as exc:
            problems.append(f"{example.where}: {exc}")
        else:
            kept.append(example)
    return kept, problems, tokens
