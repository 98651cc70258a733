"""Regexes that come from a pushed adapter, run safely.

``target_modules`` (string form) and the keys of ``rank_pattern`` / ``alpha_pattern`` are regexes
chosen by the pusher, and the module names they are matched against come from the pusher's
safetensors header too, so one push could otherwise pin a CPU (and, with ``re``, which holds the
GIL while it backtracks, every other request of the registry) for as long as it likes. Here the
patterns and names are bounded in length and count, must compile under ``re`` (what PEFT and the
serving engine use), and are matched with the ``regex`` engine, which releases the GIL while it
matches and stops at a deadline shared by the whole validation.
"""

from __future__ import annotations

import re
import time
from typing import Any

import regex

from loramux.registry.errors import InvalidAdapter, InvalidPattern

CONFIG = "adapter_config.json"
MAX_PATTERN_CHARS = 512
MAX_PATTERNS = 512  # entries of rank_pattern, of alpha_pattern, of a target_modules list
MAX_MODULE_CHARS = 512
# All matches of one validation together; real adapters need milliseconds. The regex engine
# counts CPU time, the deadline here wall time: each bounds the other.
MATCH_BUDGET_S = 0.5
PATTERN_FIELDS = ("rank_pattern", "alpha_pattern")


def check_config_patterns(config: dict[str, Any]) -> None:
    """Refuse oversized or malformed patterns before anything matches them (400 naming the
    field). Runs on the raw config, so that a bad pattern is named even when other fields are
    wrong too."""
    targets = config.get("target_modules")
    if isinstance(targets, str):
        _check_pattern(targets, "target_modules")
    elif isinstance(targets, list | tuple):
        if len(targets) > MAX_PATTERNS:
            raise InvalidPattern(f"{CONFIG}: target_modules has {len(targets)} entries "
                                 f"(limit {MAX_PATTERNS})")
        for entry in targets:
            if not isinstance(entry, str) or not 0 < len(entry) <= MAX_MODULE_CHARS:
                raise InvalidPattern(f"{CONFIG}: target_modules entry {_show(entry)} must be a "
                                     f"module name of 1 to {MAX_MODULE_CHARS} characters")
    for name in PATTERN_FIELDS:
        patterns = config.get(name)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            raise InvalidPattern(f"{CONFIG}: {name} must be an object of pattern -> value")
        if len(patterns) > MAX_PATTERNS:
            raise InvalidPattern(f"{CONFIG}: {name} has {len(patterns)} entries "
                                 f"(limit {MAX_PATTERNS})")
        for key in patterns:
            _check_pattern(key, f"{name} key")


def check_tensor_name(tensor: str) -> None:
    """Module names are tensor names minus a suffix: bounding these bounds what patterns see."""
    if len(tensor) > MAX_MODULE_CHARS:
        raise InvalidAdapter(f"tensor name {_show(tensor)} is {len(tensor)} characters "
                             f"(limit {MAX_MODULE_CHARS})")


def _check_pattern(pattern: str, field: str) -> None:
    if not pattern:
        raise InvalidPattern(f"{CONFIG}: {field} is an empty pattern")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidPattern(f"{CONFIG}: {field} {_show(pattern)} is {len(pattern)} characters "
                             f"(limit {MAX_PATTERN_CHARS})")
    try:
        re.compile(pattern)
        regex.compile(pattern, flags=regex.V0)
    except (re.error, regex.error, OverflowError, RecursionError) as exc:
        raise InvalidPattern(f"{CONFIG}: {field} {_show(pattern)} is not a valid regex: "
                             f"{exc}") from None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"


class Matcher:
    """Matches the adapter's patterns against its module names within one shared deadline."""

    def __init__(self, budget_s: float = MATCH_BUDGET_S) -> None:
        self._deadline = time.monotonic() + budget_s
        self._compiled: dict[str, Any] = {}

    def fullmatch(self, pattern: str, name: str, field: str) -> bool:
        return self._run(pattern, name, field) is not None

    def peft_key_matches(self, pattern: str, name: str, field: str) -> bool:
        """PEFT's rule for rank_pattern/alpha_pattern keys: the key matches a name suffix."""
        return self._run(rf"(?:.*\.)?(?:{pattern})", name, field, shown=pattern) is not None

    def _run(self, pattern: str, name: str, field: str, *, shown: str | None = None) -> Any:
        compiled = self._compiled.get(pattern)
        if compiled is None:
            try:
                compiled = self._compiled[pattern] = regex.compile(pattern, flags=regex.V0)
            except regex.error as exc:
                raise InvalidPattern(f"{CONFIG}: {field} {_show(shown or pattern)} is not a "
                                     f"valid regex here: {exc}") from None
        left = self._deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            return compiled.fullmatch(name, timeout=left)
        except TimeoutError:
            raise InvalidPattern(
                f"{CONFIG}: {field} {_show(shown or pattern)} takes too long to match the "
                "adapter's module names (catastrophic backtracking?): use plain alternatives "
                "such as '.*\\.(q_proj|v_proj)'"
            ) from None
