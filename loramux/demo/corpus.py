"""A generated chat corpus for the offline demo base model.

No hub is reachable where loramux is developed and tested, so the demo base model learns its
language from dialogues generated here. The corpus is small and deterministic (one seed): it
teaches the chat format and a few generic skills (arithmetic, copying, casing, counting, simple
facts), but none of the demo fine-tuning tasks, so that an adapter's effect on them is visible.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

Message = dict[str, str]

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "pink"]
ANIMALS = ["cat", "dog", "fox", "owl", "horse", "rabbit", "bear", "wolf", "mouse", "tiger",
           "eagle", "whale", "frog", "goat", "lion", "duck"]
OBJECTS = ["book", "chair", "lamp", "cup", "table", "window", "door", "clock", "pencil", "box",
           "bottle", "shoe", "hat", "key", "phone", "bag"]
NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy",
         "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter"]
PLACES = ["the park", "the market", "the library", "the river", "the station", "the garden",
          "the school", "the harbor", "the museum", "the bakery"]
VERBS = ["walks to", "runs to", "drives to", "looks at", "sits near", "waits at", "reads at"]
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer briefly.",
    "You are a friendly assistant.",
    "Answer the user's question.",
]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve"]


def _phrase(rng: random.Random, n: int) -> str:
    pool = COLORS + ANIMALS + OBJECTS
    return " ".join(rng.choice(pool) for _ in range(n))


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(NAMES)} {rng.choice(VERBS)} {rng.choice(PLACES)}."


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    op = rng.choice(["+", "-", "*"])
    if op == "*":
        a, b = rng.randint(0, 12), rng.randint(0, 12)
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    q = rng.choice([f"What is {a} {op} {b}?", f"Compute {a} {op} {b}.", f"{a} {op} {b} = ?"])
    return q, f"{a} {op} {b} = {value}."


def _repeat(rng: random.Random) -> tuple[str, str]:
    text = _phrase(rng, rng.randint(1, 5))
    q = rng.choice([f"Repeat after me: {text}", f"Say exactly this: {text}", f"Echo: {text}"])
    return q, text


def _upper(rng: random.Random) -> tuple[str, str]:
    text = _phrase(rng, rng.randint(1, 4))
    q = rng.choice([f"Write in capital letters: {text}", f"Uppercase this: {text}"])
    return q, text.upper()


def _count(rng: random.Random) -> tuple[str, str]:
    words = _phrase(rng, rng.randint(1, 9)).split()
    n = len(words)
    return f"How many words are in: {' '.join(words)}", f"There are {n} words."


def _reverse(rng: random.Random) -> tuple[str, str]:
    words = _phrase(rng, rng.randint(2, 5)).split()
    return f"Reverse the order of: {' '.join(words)}", " ".join(reversed(words))


def _sort_numbers(rng: random.Random) -> tuple[str, str]:
    nums = [rng.randint(0, 99) for _ in range(rng.randint(2, 6))]
    q = f"Sort these numbers: {', '.join(map(str, nums))}"
    return q, ", ".join(map(str, sorted(nums)))


def _compare(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(100), 2)
    return f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger."


def _spell(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 12)
    return f"Write the number {n} in words.", NUMBER_WORDS[n]


def _story(rng: random.Random) -> tuple[str, str]:
    who = rng.choice(NAMES)
    q = rng.choice(
        [f"Tell me about {who}.", f"What does {who} do?", f"Write a sentence about {who}."])
    return q, f"{who} {rng.choice(VERBS)} {rng.choice(PLACES)}. " + _sentence(rng)


def _color_of(rng: random.Random) -> tuple[str, str]:
    obj, color = rng.choice(OBJECTS), rng.choice(COLORS)
    return f"The {obj} is {color}. What color is the {obj}?", f"The {obj} is {color}."


def _greeting(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    q = rng.choice(["Hello!", "Hi there.", f"Hello, I am {name}.", "Good morning.", "Hey!"])
    a = rng.choice(["Hello! How can I help you?", "Hi! What can I do for you?",
                    "Good day. How can I help?"])
    return q, a


# Copying skills are listed more than once: a base that can copy from its prompt makes
# format-conversion adapters learnable in a minute of LoRA training.
SKILLS = [_arithmetic, _repeat, _repeat, _repeat, _upper, _upper, _count, _reverse, _sort_numbers,
          _compare, _spell, _story, _color_of, _greeting]


def dialogue(rng: random.Random) -> list[Message]:
    """One conversation: an optional system turn and one to three user/assistant exchanges."""
    messages: list[Message] = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for _ in range(rng.choice([1, 1, 2, 3])):
        q, a = rng.choice(SKILLS)(rng)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return messages


def dialogues(n: int, seed: int = 0) -> Iterator[list[Message]]:
    rng = random.Random(seed)
    for _ in range(n):
        yield dialogue(rng)
