"""A builtin verifiable instruction-following preference, in the spirit of IFEval.

Every prompt is an everyday task followed by one checkable constraint in plain English
("Describe the sea. Do not use any commas in your answer."). The oracle reads the
constraint back from the prompt text with the regexes of the fixed templates below and
prefers the response that satisfies it (or comes closer to it):

    P(a > b) = sigmoid(sharpness * (score(a) - score(b)))

where score is 1 for a satisfied constraint and PARTIAL_WEIGHT * degree (< 0.5) for a
violated one, so that any success beats any near miss while partial credit still orders
the failures. Equal scores give exactly 0.5: there is no tie-breaker.

Kinds (`KINDS`): max_words, lowercase, no_commas, keyword, forbidden_word, start_word,
one_sentence; the generator leaves lowercase out by default (see `DEFAULT_KINDS`).
An empty response (no word at all) satisfies nothing: otherwise stopping at once would
trivially obey "no commas" or "at most N words".
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from inpo.data import Prompt
from inpo.oracle.base import Oracle, OracleError
from inpo.oracle.synthetic import sigmoid

#: Weight of partial credit: a violated constraint scores at most this, a satisfied one 1.
PARTIAL_WEIGHT = 0.5

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


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{n\}", r"(\d+)").replace(r"\{word\}", r"([A-Za-z]+)")
    # Whitespace-tolerant, so hand-typed prompts with doubled spaces still parse.
    return re.compile(pattern.replace(r"\ ", r"\s+"), re.IGNORECASE)


_WORD_KINDS = ("keyword", "forbidden_word", "start_word")
_PATTERNS = {kind: _template_regex(t) for kind, t in TEMPLATES.items()}

# A word: letters/digits, with inner apostrophes or hyphens ("don't", "well-known").
_WORD = re.compile(r"\w+(?:['’-]\w+)*")
_COMMAS = ",，"  # ASCII and full-width
# A sentence ends at . ! or ? (possibly closed by a quote, bracket or markdown *),
# followed by whitespace; a line break also ends one (lists, headings).
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”’)*])\s+|\n+")
_TERMINATED = re.compile(r"[.!?][\"'”’)*]*$")


def _base(word: str) -> str:
    """Lowercased, without a possessive 's: "Sea's" counts as "sea"."""
    w = word.lower()
    for suffix in ("'s", "’s"):
        w = w.removesuffix(suffix)
    return w


def _forms(word: str) -> set[str]:
    """A word and its regular plurals."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    return forms


def words(text: str) -> list[str]:
    """The words of ``text``; punctuation attached to a word is not part of it."""
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    """Sentence-like segments of ``text`` that contain at least one word."""
    return [s for s in _SENTENCE_BREAK.split(text.strip()) if _WORD.search(s)]


@dataclass(frozen=True)
class Constraint:
    """One checkable constraint: ``n`` for max_words, ``word`` for keyword, forbidden_word
    and start_word."""

    kind: str
    n: int = 0
    word: str = ""

    def __post_init__(self) -> None:
        if self.kind not in TEMPLATES:
            raise ValueError(f"constraint kind {self.kind!r}: unknown (known: {', '.join(KINDS)})")
        if self.kind == "max_words" and self.n < 1:
            raise ValueError(f"max_words needs n >= 1, got {self.n}")
        if self.kind in _WORD_KINDS and not re.fullmatch(r"[A-Za-z]+", self.word):
            raise ValueError(f"{self.kind} needs a single word of letters, got {self.word!r}")

    def instruction(self) -> str:
        """The sentence a prompt carries; `parse_constraint` reads it back."""
        return TEMPLATES[self.kind].format(n=self.n, word=self.word)

    def check(self, response: str) -> bool:
        return self.degree(response) == 1.0

    def degree(self, response: str) -> float:
        """How far ``response`` satisfies the constraint: 1 iff satisfied, else in [0, 1)."""
        text = response.strip()
        ws = words(text)
        if not ws:
            return 0.0
        if self.kind == "max_words":
            # A response cut at the token limit counts as written: too long is too long.
            return min(1.0, self.n / len(ws))
        if self.kind == "lowercase":
            cased = [c for c in text if c.islower() or c.isupper()]
            if not cased:
                return 0.0  # digits or symbols only: no lowercase letters were written
            return sum(c.islower() for c in cased) / len(cased)
        if self.kind == "no_commas":
            return 1.0 / (1.0 + sum(text.count(c) for c in _COMMAS))
        target = self.word.lower()
        lowered = [_base(w) for w in ws]
        if self.kind == "keyword":
            if target in lowered:
                return 1.0
            # An inflected form ("waves" for "wave") is close but not the word asked for.
            return 0.5 if any(w.startswith(target) for w in lowered) else 0.0
        if self.kind == "forbidden_word":
            # Its plural is the same word to a reader: "seas" breaks "do not use 'sea'".
            return 1.0 / (1.0 + sum(w in _forms(target) for w in lowered))
        if self.kind == "start_word":
            # Case-insensitive, and leading quotes or markdown (**Yes**) do not count as words.
            # Credit decays with how late the word first appears: "Well, yes" gets 1/2.
            if target not in lowered:
                return 0.0
            return 1.0 / (1.0 + lowered.index(target))
        if self.kind == "one_sentence":
            parts = sentences(text)
            if len(parts) == 1:
                # One sentence cut off at the token limit is not a finished sentence.
                return 1.0 if _TERMINATED.search(parts[0]) else 0.5
            return 1.0 / len(parts)
        raise AssertionError(self.kind)


def prompt_text(prompt: Prompt) -> str:
    """The text the constraint is read from: a string prompt, or the last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def parse_constraint(prompt: Prompt) -> Constraint | None:
    """The constraint a prompt carries, None if it has none; OracleError if several differ."""
    text = prompt_text(prompt)
    found = set()
    for kind, pattern in _PATTERNS.items():
        for m in pattern.finditer(text):
            if kind == "max_words":
                found.add(Constraint(kind, n=int(m.group(1))))
            elif kind in _WORD_KINDS:
                found.add(Constraint(kind, word=m.group(1)))
            else:
                found.add(Constraint(kind))
    if len(found) > 1:
        raise OracleError(f"prompt {text[:60]!r} carries {len(found)} constraints; expected one")
    return found.pop() if found else None


def _require(prompt: Prompt) -> Constraint:
    c = parse_constraint(prompt)
    if c is None:
        # A silent 0.5 would train on nothing; say which prompt is not a constraint prompt.
        raise OracleError(
            f"prompt {prompt_text(prompt)[:60]!r} carries no constraint the 'constraints' "
            f"oracle knows (use inpo.oracle.constraints.constraint_prompts)"
        )
    return c


def constraint_score(prompt: Prompt, response: str) -> float:
    """1 if the prompt's constraint is satisfied, else PARTIAL_WEIGHT * degree."""
    c = _require(prompt)
    d = c.degree(response)
    return 1.0 if d == 1.0 else PARTIAL_WEIGHT * d


class ConstraintPreference(Oracle):
    """P(a > b) = sigmoid(sharpness * (score(a) - score(b))), score from `constraint_score`."""

    position_biased = False

    def __init__(self, sharpness: float):
        self.sharpness = sharpness

    def scores(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return [constraint_score(p, r) for p, r in zip(prompts, responses, strict=True)]

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        sa, sb = self.scores(prompts, a), self.scores(prompts, b)
        return [sigmoid(self.sharpness * (x - y)) for x, y in zip(sa, sb, strict=True)]


def pass_rates_by_kind(prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, float]:
    """Share of satisfied constraints per kind, for the kinds present (in `KINDS` order)."""
    passed: dict[str, list[bool]] = {}
    for p, r in zip(prompts, responses, strict=True):
        c = _require(p)
        passed.setdefault(c.kind, []).append(c.check(r))
    return {k: sum(passed[k]) / len(passed[k]) for k in KINDS if k in passed}


def constraint_pass_rate(prompts: Sequence[Prompt], responses: Sequence[str]) -> float:
    """Share of (prompt, response) pairs whose constraint is satisfied."""
    if len(prompts) == 0:
        raise ValueError("constraint_pass_rate of no responses")
    ok = [_require(p).check(r) for p, r in zip(prompts, responses, strict=True)]
    return sum(ok) / len(ok)


# --- prompt generator -----------------------------------------------------------------

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


def _draw(kind: str, task: _Task, rng: random.Random) -> Constraint:
    if kind == "max_words":
        return Constraint(kind, n=rng.choice(_MAX_WORDS))
    if kind == "keyword":
        # Half related to the task (often said anyway), half unrelated (needs following).
        pool = task.related if rng.random() < 0.5 else _UNRELATED
        return Constraint(kind, word=rng.choice(pool))
    if kind == "forbidden_word":
        return Constraint(kind, word=task.subject)
    if kind == "start_word":
        return Constraint(kind, word=rng.choice(_START_WORDS))
    return Constraint(kind)


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
        c = _draw(kind, tasks[j], rng)
        out.append([{"role": "user", "content": f"{tasks[j].text} {c.instruction()}"}])
    return out
