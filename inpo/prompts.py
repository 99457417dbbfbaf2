"""The builtin prompt sets, generated in code (no download): `data.prompts=builtin:NAME`.

- quickstart: short chat prompts for the CPU demo and the tests.
- ifeval: everyday tasks, each followed by one checkable instruction in plain English
  ("Describe the sea. Do not use any commas in your answer."), for the builtin `ifeval`
  oracle (inpo.judging.constraints), which reads the instruction back from these templates.

Prompts are data: this module imports nothing from the oracle, the oracle imports it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

_QUICK_TOPICS = (
    "the sea",
    "a cat",
    "rain",
    "music",
    "a city",
    "bread",
    "the moon",
    "a garden",
    "trains",
    "winter",
    "a library",
    "coffee",
    "mountains",
    "a river",
    "friendship",
    "the sun",
)
_QUICK_ASKS = (
    "Write one line about {}.",
    "Describe {} in a few words.",
    "Say something kind about {}.",
    "Give a short phrase on {}.",
    "What comes to mind with {}?",
    "Name a feeling about {}.",
    "Invent a title about {}.",
    "Whisper a secret about {}.",
)


def quickstart_prompts() -> list[list[dict[str, str]]]:
    """builtin:quickstart: 512 distinct one-turn chat prompts."""
    return [
        [{"role": "user", "content": f"{ask.format(topic)} (#{i})"}]
        for i in range(4)
        for topic in _QUICK_TOPICS
        for ask in _QUICK_ASKS
    ]


# --- ifeval ---------------------------------------------------------------------------

#: The instruction sentence of each kind; {n} is an integer, {word} a single word.
TEMPLATES: dict[str, str] = {
    "max_words": "Answer in at most {n} words.",
    "lowercase": "Write your whole answer in lowercase letters only.",
    "no_commas": "Do not use any commas in your answer.",
    "keyword": "Include the word '{word}' in your answer.",
    "forbidden_word": "Do not use the word '{word}' in your answer.",
    "start_word": "Start your answer with the word '{word}'.",
    "one_sentence": "Answer in one sentence.",
}
KINDS: tuple[str, ...] = tuple(TEMPLATES)
# What `constraint_prompts` draws from. Lowercase stays parseable but is left out: a small
# chat model capitalises its first letter almost always (SmolLM2-135M: 3% pass), too rare
# a success to learn from in a few iterations.
DEFAULT_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k != "lowercase")


# (topic, its subject word, words related to it): the subject is what "Do not use the word"
# forbids (the model says it by habit), the related words are keyword candidates.
_TOPICS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("the sea", "sea", ("water", "waves", "salt")),
    ("a cat", "cat", ("fur", "paws", "purr")),
    ("rain", "rain", ("clouds", "wet", "umbrella")),
    ("music", "music", ("song", "rhythm", "melody")),
    ("a big city", "city", ("streets", "traffic", "buildings")),
    ("bread", "bread", ("flour", "oven", "crust")),
    ("the moon", "moon", ("night", "light", "orbit")),
    ("a garden", "garden", ("flowers", "soil", "seeds")),
    ("trains", "train", ("tracks", "station", "travel")),
    ("winter", "winter", ("snow", "cold", "ice")),
    ("a library", "library", ("books", "quiet", "reading")),
    ("coffee", "coffee", ("morning", "beans", "cup")),
    ("mountains", "mountain", ("peak", "climb", "rocks")),
    ("a river", "river", ("flow", "fish", "bank")),
    ("friendship", "friendship", ("trust", "kindness", "together")),
    ("the sun", "sun", ("warm", "star", "bright")),
    ("dogs", "dog", ("loyal", "bark", "walk")),
    ("the forest", "forest", ("trees", "leaves", "green")),
    ("cooking", "cooking", ("recipe", "kitchen", "taste")),
    ("summer", "summer", ("heat", "beach", "holiday")),
    ("birds", "bird", ("wings", "feathers", "sing")),
    ("the internet", "internet", ("online", "computer", "websites")),
    ("football", "football", ("ball", "team", "goal")),
    ("chocolate", "chocolate", ("sweet", "cocoa", "dessert")),
    ("the desert", "desert", ("sand", "dry", "camel")),
    ("a birthday party", "party", ("cake", "gifts", "friends")),
    ("bicycles", "bicycle", ("wheels", "ride", "pedal")),
    ("the ocean floor", "ocean", ("deep", "dark", "creatures")),
    ("learning a language", "language", ("words", "practice", "grammar")),
    ("a thunderstorm", "thunderstorm", ("lightning", "thunder", "wind")),
    ("apples", "apple", ("fruit", "tree", "red")),
    ("the night sky", "sky", ("stars", "dark", "planets")),
    ("sleep", "sleep", ("dreams", "bed", "rest")),
    ("a museum", "museum", ("art", "history", "paintings")),
    ("tea", "tea", ("leaves", "hot", "cup")),
    ("autumn", "autumn", ("leaves", "harvest", "orange")),
    ("a small village", "village", ("houses", "quiet", "neighbors")),
    ("robots", "robot", ("machines", "metal", "program")),
    ("the beach", "beach", ("sand", "waves", "shells")),
    ("honey bees", "bee", ("hive", "honey", "flowers")),
    ("a rainy day", "rain", ("puddles", "umbrella", "grey")),
    ("volcanoes", "volcano", ("lava", "eruption", "heat")),
    ("a good book", "book", ("story", "pages", "characters")),
    ("the wind", "wind", ("air", "blow", "breeze")),
    ("snow", "snow", ("white", "cold", "flakes")),
    ("a market", "market", ("food", "people", "prices")),
    ("the human heart", "heart", ("blood", "beat", "body")),
    ("pizza", "pizza", ("cheese", "dough", "tomato")),
    ("space travel", "space", ("rocket", "astronauts", "planets")),
    ("a quiet morning", "morning", ("sunrise", "calm", "birds")),
)

_TASKS_ON_TOPIC = (
    "Describe {}.",
    "Tell me something interesting about {}.",
    "Write a short note about {}.",
    "Explain why people like {}.",
    "What is special about {}?",
    "Give one fact about {}.",
    "Share a thought about {}.",
    "Write a few words about {}.",
)

# Standalone everyday tasks, with their subject word and related words.
_TASKS_ALONE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Give advice for a job interview.", "interview", ("prepare", "confident", "questions")),
    ("Explain why the sky is blue.", "sky", ("light", "sun", "air")),
    ("Suggest a name for a pet dog.", "dog", ("name", "puppy", "friend")),
    ("Explain how to make a cup of tea.", "tea", ("water", "boil", "leaves")),
    ("Give a tip for sleeping better.", "sleep", ("bed", "night", "rest")),
    ("Describe your ideal weekend.", "weekend", ("relax", "friends", "morning")),
    ("Explain what a computer does.", "computer", ("data", "program", "screen")),
    ("Give advice to a new student.", "student", ("study", "friends", "classes")),
    ("Explain why exercise is healthy.", "exercise", ("body", "heart", "strong")),
    ("Suggest a hobby for a rainy day.", "hobby", ("reading", "painting", "games")),
    ("Describe how plants grow.", "plant", ("sunlight", "water", "roots")),
    ("Give a tip for saving money.", "money", ("budget", "spend", "save")),
    ("Explain why people travel.", "travel", ("places", "culture", "adventure")),
    ("Describe a perfect breakfast.", "breakfast", ("eggs", "coffee", "toast")),
    ("Give advice for learning to cook.", "cook", ("recipe", "practice", "kitchen")),
    ("Explain why we need water.", "water", ("drink", "body", "life")),
    ("Suggest a gift for a friend.", "gift", ("book", "card", "flowers")),
    ("Describe what makes a good teacher.", "teacher", ("patient", "students", "kind")),
    ("Give a tip for staying calm.", "calm", ("breathe", "slowly", "relax")),
    ("Explain why leaves change color in autumn.", "leaves", ("trees", "cold", "yellow")),
    ("Give advice for a first day at work.", "work", ("colleagues", "listen", "early")),
    ("Explain how rainbows form.", "rainbow", ("light", "rain", "colors")),
    ("Suggest a way to make new friends.", "friend", ("club", "talk", "smile")),
    ("Describe how to plant a tree.", "tree", ("hole", "soil", "water")),
    ("Give a tip for writing a letter.", "letter", ("clear", "short", "pen")),
    ("Explain why people keep pets.", "pet", ("company", "love", "animals")),
    ("Give advice for a long car trip.", "car", ("snacks", "music", "rest")),
    ("Explain what clouds are made of.", "cloud", ("water", "droplets", "sky")),
    ("Suggest a name for a new cafe.", "cafe", ("coffee", "cozy", "bean")),
    ("Give a tip for reading more books.", "book", ("daily", "library", "time")),
    ("Explain why the sea is salty.", "sea", ("rivers", "rocks", "minerals")),
    ("Describe a walk in the park.", "park", ("trees", "path", "grass")),
    ("Give advice for a rainy holiday.", "holiday", ("indoors", "museum", "umbrella")),
    ("Explain why people laugh.", "laugh", ("funny", "joy", "friends")),
    ("Suggest a quick healthy snack.", "snack", ("fruit", "nuts", "yogurt")),
    ("Give a tip for keeping a room tidy.", "room", ("clean", "shelf", "daily")),
    ("Explain how a bicycle works.", "bicycle", ("pedals", "chain", "wheels")),
    ("Describe the smell of fresh bread.", "bread", ("warm", "oven", "sweet")),
    ("Give advice for speaking in public.", "public", ("practice", "audience", "calm")),
    ("Explain why the moon changes shape.", "moon", ("sun", "light", "orbit")),
)

# Words unrelated to any task: including them takes following the instruction, not the topic.
_UNRELATED = (
    "banana", "purple", "rocket", "pencil", "elephant", "guitar", "orange", "window",
    "silver", "dragon", "pillow", "candle", "tiger", "violin", "castle", "mirror",
)  # fmt: skip
# Openers SmolLM2-135M-Instruct follows at times (5-35% of samples): "Well", "Indeed" or
# "Absolutely" it almost never writes first, which leaves the learner nothing to compare.
_START_WORDS = ("Yes", "Hello", "Sure", "Okay")
_MAX_WORDS = range(8, 21)


class _Task(NamedTuple):
    text: str
    subject: str
    related: tuple[str, ...]


def _tasks() -> list[_Task]:
    on_topic = [
        _Task(t.format(topic), subject, related)
        for topic, subject, related in _TOPICS
        for t in _TASKS_ON_TOPIC
    ]
    return on_topic + [_Task(*row) for row in _TASKS_ALONE]


def _draw(kind: str, task: _Task, rng: random.Random) -> str:
    """The instruction sentence of one constraint of ``kind`` for ``task``."""
    if kind == "max_words":
        return TEMPLATES[kind].format(n=rng.choice(_MAX_WORDS))
    if kind == "keyword":
        # Half related to the task (often said anyway), half unrelated (needs following).
        pool = task.related if rng.random() < 0.5 else _UNRELATED
        return TEMPLATES[kind].format(word=rng.choice(pool))
    if kind == "forbidden_word":
        return TEMPLATES[kind].format(word=task.subject)
    if kind == "start_word":
        return TEMPLATES[kind].format(word=rng.choice(_START_WORDS))
    return TEMPLATES[kind]


def constraint_prompts(
    n: int | None = None, seed: int = 0, kinds: Sequence[str] = DEFAULT_KINDS
) -> list[list[dict[str, str]]]:
    """``n`` distinct chat prompts (one user turn: a task, then one constraint of
    ``kinds``); by default one per task (440). Deterministic for ``seed``; the kinds take
    turns, so any slice of consecutive prompts is balanced across them, and a shorter list
    is a prefix of a longer one: slice one call for disjoint train and held-out sets (two
    seeds may share prompts)."""
    tasks = _tasks()
    kinds = list(dict.fromkeys(kinds))
    if not kinds or any(k not in TEMPLATES for k in kinds):
        raise ValueError(f"constraint_prompts: kinds = {kinds}: choose from {', '.join(KINDS)}")
    total = len(tasks) if n is None else n
    if not 0 <= total <= len(tasks) * len(kinds):
        raise ValueError(f"constraint_prompts: n = {n}: must lie in [0, {len(tasks) * len(kinds)}]")
    rng = random.Random(seed)
    order = list(range(len(tasks)))
    rng.shuffle(order)
    used: list[set[str]] = [set() for _ in tasks]  # kinds each task has had
    out: list[list[dict[str, str]]] = []
    turn: list[str] = []
    for i in range(total):
        if not turn:  # a fresh shuffled round of every kind keeps prefixes balanced
            turn = list(kinds)
            rng.shuffle(turn)
        j = order[i % len(tasks)]
        kind = turn.pop()
        # Past one pass over the tasks a task comes back with a kind it has not had yet,
        # so prompts stay distinct even where a kind has no parameter (one_sentence).
        if kind in used[j]:
            kind = rng.choice([k for k in kinds if k not in used[j]])
        used[j].add(kind)
        instruction = _draw(kind, tasks[j], rng)
        out.append([{"role": "user", "content": f"{tasks[j].text} {instruction}"}])
    return out


def ifeval_prompts(kinds: Sequence[str] = DEFAULT_KINDS) -> list[list[dict[str, str]]]:
    """builtin:ifeval: 1200 prompts (3 x 256 training + 128 held out, all distinct), or
    every distinct one when fewer kinds allow fewer (440 tasks per kind)."""
    return constraint_prompts(min(1200, len(_tasks()) * len(set(kinds))), kinds=kinds)
