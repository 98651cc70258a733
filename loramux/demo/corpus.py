"""A generated chat corpus for the offline demo base model.

No hub is reachable where loramux is developed and tested, so the demo base model learns its
language from dialogues generated here. The corpus is small and deterministic (one seed): it
teaches the chat format, copying a word from anywhere in the question, capitals after a colon,
facts looked up by the thing asked about (an animal's name, sound and home, ...) and a little
arithmetic and small talk, but none of the demo fine-tuning tasks, so that an adapter's effect
on them is visible.
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
# Pets' names: a pool apart from NAMES (the demo's code words are drawn from NAMES), so a base
# asked for a code word answers a pet's name and scores 0 on the codeword task.
PET_NAMES = ["Max", "Bella", "Luna", "Charlie", "Daisy", "Milo", "Coco", "Rocky", "Lucky", "Sunny",
             "Ginger", "Pepper", "Shadow", "Buddy", "Oscar", "Rosie"]
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
    text = _phrase(rng, rng.choice([1, 1, 1, 2, 3]))
    q = rng.choice([f"Write in capital letters: {text}", f"Uppercase this: {text}"])
    return q, text.upper()


def _mention(rng: random.Random) -> tuple[str, str]:
    """A word copied from anywhere in the question (never in capitals: that stays the caps
    adapter's job)."""
    word = _phrase(rng, 1)
    q = rng.choice([f"I like the word {word} a lot. Which word do I like?",
                    f"The word {word} is on the card. What word is on the card?",
                    f"Please say {word} again.", f"Say the word {word} back to me.",
                    f"Is {word} a word? Say it.", f"Which word did I write: {word}?",
                    f"Copy the word {word} for me.", f"Tell me the word {word} once more."])
    return q, word


def _count(rng: random.Random) -> tuple[str, str]:
    words = _phrase(rng, rng.randint(1, 9)).split()
    n = len(words)
    return f"How many words are in: {' '.join(words)}", f"There are {n} words."


def _story(rng: random.Random) -> tuple[str, str]:
    who = rng.choice(NAMES)
    q = rng.choice(
        [f"Tell me about {who}.", f"What does {who} do?", f"Write a sentence about {who}."])
    return q, f"{who} {rng.choice(VERBS)} {rng.choice(PLACES)}. " + _sentence(rng)


def _color_of(rng: random.Random) -> tuple[str, str]:
    obj, color = rng.choice(OBJECTS), rng.choice(COLORS)
    return f"The {obj} is {color}. What color is the {obj}?", f"The {obj} is {color}."


# Facts looked up by the thing a question is about (an animal, an object, a colour), asked in
# many phrasings with the word anywhere in them: the base learns to find the entity and answer
# from a table, as pretrained models do. A LoRA then teaches a new table (the demo's code words,
# a word's capitals) by remapping that lookup, within a few hundred steps, instead of first
# having to grow the attention that finds the word (a plateau whose length varied by machine
# and base: the code-word adapter sat at 3/36 for 150 to 500 steps). Every animal has a pet's
# name, asked in the shapes a code word is asked in, so the code-word adapter maps one name
# table to another, as a fine-tune of a pretrained model would.
FACTS = {
    "name": dict(zip(ANIMALS, PET_NAMES, strict=True)),
    "sound": dict(zip(ANIMALS, ["meow", "woof", "yip", "hoot", "neigh", "squeak", "growl",
                                "howl", "squeak", "roar", "screech", "song", "croak", "bleat",
                                "roar", "quack"], strict=True)),
    "home": dict(zip(ANIMALS, ["house", "kennel", "den", "tree", "stable", "burrow", "cave",
                               "forest", "hole", "jungle", "nest", "ocean", "pond", "farm",
                               "savanna", "lake"], strict=True)),
    "room": dict(zip(OBJECTS, ["study", "kitchen", "bedroom", "kitchen", "kitchen", "hall",
                               "hall", "hall", "study", "attic", "kitchen", "hall", "bedroom",
                               "hall", "study", "bedroom"], strict=True)),
    "feel": dict(zip(COLORS, ["warm", "cool", "fresh", "bright", "rich", "warm", "dark", "clean",
                              "dull", "soft"], strict=True)),
}
FACT_QUESTIONS = {
    "name": ["What is the name of the {x}?", "What is the {x} called?", "Name of the {x}?",
             "Tell me the name of the {x}.", "Give me the {x} name.", "The {x} has a name. "
             "What is it?", "Which name does the {x} have?", "Do you know the name of the {x}?",
             "Please tell me the {x} name.", "What name goes with the {x}?"],
    "sound": ["What sound does the {x} make?", "Which sound does a {x} make?",
              "The {x} makes which sound?", "Tell me the sound of the {x}.",
              "What noise does the {x} make?", "How does the {x} sound?"],
    "home": ["Where does the {x} live?", "What is the home of the {x}?",
             "The {x} lives where?", "Tell me where a {x} lives.", "Where is the {x} at home?",
             "Which place is home to the {x}?"],
    "room": ["Which room is the {x} in?", "Where do we keep the {x}?", "The {x} goes in which "
             "room?", "Tell me the room of the {x}.", "In what room is the {x}?",
             "Where is the {x} kept?"],
    "feel": ["How does {x} feel?", "What mood is the colour {x}?", "The colour {x} feels how?",
             "Tell me the feel of {x}.", "Is {x} warm or cool?", "Describe the colour {x}."],
}


def _fact(rng: random.Random) -> tuple[str, str]:
    relation = rng.choice(sorted(FACTS))
    thing = rng.choice(sorted(FACTS[relation]))
    return rng.choice(FACT_QUESTIONS[relation]).format(x=thing), FACTS[relation][thing]


def _greeting(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    q = rng.choice(["Hello!", "Hi there.", f"Hello, I am {name}.", "Good morning.", "Hey!"])
    a = rng.choice(["Hello! How can I help you?", "Hi! What can I do for you?",
                    "Good day. How can I help?"])
    return q, a


# Copying and lookups are most of the corpus: a base that finds a word anywhere in its prompt
# and answers from it makes the demo adapters a remap of what it already does (a few hundred
# LoRA steps on every base a CPU builds). Spread over more skills, a base of this size learns
# none of them in its budget: it answered every question with one word, and the adapters
# first had to grow the lookup, a plateau whose length differed from base to base.
SKILLS = [_arithmetic, _repeat, _repeat, _upper, _upper, _upper, _mention, _mention, _count,
          _color_of, _greeting, _story, _fact, _fact, _fact, _fact, _fact, _fact]
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
