"""The assistant's questions: a few hundred chat prompts with known answers.

Built once from the hand-written tables (assistant/facts.py, explanations.py)
and seeded templates by ``python -m assistant.dataset`` into questions.jsonl
beside this file, which is committed; :func:`load_items` reads it (and
rebuilds it in memory if the file is missing). A test checks the file matches
what the builder writes, so the two never drift.

Each item: ``id``, ``category``, ``messages`` (the chat: one user turn),
``answers`` (accepted variants; for numbers the value), ``key_terms`` (for
how-to questions and definitions: groups of variants), ``wrong`` (answers to
watch for), ``reference`` (a correct answer, core sentence first) and
``split`` ("train" or "heldout", by a hash of the id).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from assistant import arithmetic
from assistant import explanations as X
from assistant import facts as F

DATA_FILE = Path(__file__).with_name("questions.jsonl")
SEED = 20261207
HELDOUT_SHARE = 0.2
NUMERIC = ("arithmetic", "conversion")


@dataclass(frozen=True)
class Item:
    id: str
    category: str
    messages: tuple[dict[str, str], ...]
    answers: tuple[str, ...] = ()
    key_terms: tuple[tuple[str, ...], ...] = ()
    wrong: tuple[str, ...] = ()
    reference: str = ""
    case_sensitive: bool = False
    split: str = "train"

    @property
    def question(self) -> str:
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    @property
    def numeric(self) -> bool:
        return self.category in NUMERIC

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, raw: dict) -> Item:
        return cls(
            id=raw["id"],
            category=raw["category"],
            messages=tuple(dict(m) for m in raw["messages"]),
            answers=tuple(raw.get("answers", ())),
            key_terms=tuple(tuple(g) for g in raw.get("key_terms", ())),
            wrong=tuple(raw.get("wrong", ())),
            reference=raw.get("reference", ""),
            case_sensitive=bool(raw.get("case_sensitive", False)),
            split=raw.get("split", "train"),
        )


@dataclass
class _Builder:
    rng: random.Random
    items: list[Item] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def add(self, category: str, question: str, *, answers=(), key_terms=(), wrong=(), reference="", cs=False):
        key = question.strip().lower()
        if key in self.seen:
            return
        self.seen.add(key)
        digest = hashlib.sha256(f"{category}:{question}".encode()).hexdigest()
        split = "heldout" if int(digest[:8], 16) / 0xFFFFFFFF < HELDOUT_SHARE else "train"
        self.items.append(
            Item(
                id=f"{category}-{digest[:10]}",
                category=category,
                messages=({"role": "user", "content": question},),
                answers=tuple(answers),
                key_terms=tuple(tuple(g) for g in key_terms),
                wrong=tuple(dict.fromkeys(w for w in wrong if w not in answers)),
                reference=reference,
                case_sensitive=cs,
                split=split,
            )
        )


def _num(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))


CAPITAL_TEMPLATES = (
    "What is the capital of {c}?",
    "What's the capital city of {c}?",
    "Which city is the capital of {c}?",
    "Can you tell me the capital of {c}?",
)
SYMBOL_TEMPLATES = ("What is the chemical symbol for {e}?", "What's the symbol for {e} on the periodic table?")
AUTHOR_TEMPLATES = ("Who wrote {t}?", "Who is the author of {t}?", "Which writer wrote {t}?")
CONVERSION_TEMPLATES = ("How many {to} are in {n} {frm}?", "Convert {n} {frm} to {to}.", "What is {n} {frm} in {to}?")


def _facts(b: _Builder) -> None:
    all_capitals = [cap for _, cap, _, _ in F.CAPITALS]
    for country, capital, variants, common in F.CAPITALS:
        q = b.rng.choice(CAPITAL_TEMPLATES).format(c=country)
        others = [c for c in all_capitals if c != capital]
        b.add(
            "capital",
            q,
            answers=(capital, *variants),
            wrong=(*common, *others),
            reference=f"The capital of {country} is {capital}. {capital} is where the national government of "
            f"{country} sits.",
        )
    common_words = {"lead", "tin", "iron", "gold", "silver", "neon", "mercury"}
    element_names = [e for e, _, _ in F.ELEMENTS]
    for element, symbol, wrong in F.ELEMENTS:
        q = b.rng.choice(SYMBOL_TEMPLATES).format(e=element)
        b.add(
            "chemistry",
            q,
            answers=(symbol,),
            wrong=wrong,
            cs=True,
            reference=f"The chemical symbol for {element} is {symbol}. You will find it as {symbol} on the "
            "periodic table.",
        )
        if element not in common_words:
            others = [e for e in element_names if e != element and e not in common_words]
            b.add(
                "chemistry",
                f"Which element has the chemical symbol {symbol}?",
                answers=(element,),
                wrong=others,
                reference=f"{symbol} is the chemical symbol for {element.capitalize()}.",
            )
    for question, planet, reference in F.PLANET_FACTS:
        b.add(
            "planet",
            question,
            answers=(planet,),
            wrong=[p for p in F.PLANETS if p != planet],
            reference=f"{reference} So the answer is {planet}.",
        )
    for i, planet in enumerate(F.PLANETS):
        others = [p for p in F.PLANETS if p != planet]
        b.add(
            "planet",
            f"Which planet is the {F.ORDINALS[i]} planet from the Sun?",
            answers=(planet,),
            wrong=others,
            reference=f"{planet} is the {F.ORDINALS[i]} planet from the Sun. Counting outward from the "
            f"Sun, {planet} comes {F.ORDINALS[i]}.",
        )
    b.add(
        "planet",
        "How many planets are there in our solar system?",
        answers=("8", "eight"),
        wrong=("9", "nine"),
        reference="There are eight planets in our solar system. Pluto has been called a dwarf planet since 2006.",
    )
    authors = sorted({a for _, a, _, _ in F.BOOKS})
    for title, author, variants, common in F.BOOKS:
        q = b.rng.choice(AUTHOR_TEMPLATES).format(t=title)
        others = [a for a in authors if a != author and a not in variants]
        b.add(
            "author",
            q,
            answers=(author, *variants),
            wrong=(*common, *others),
            reference=f"{title} was written by {author}.",
        )


def _conversions(b: _Builder) -> None:
    for frm, to, factor, singular in F.CONVERSIONS:
        b.add(
            "conversion",
            f"How many {to} are in a {singular}?",
            answers=(_num(factor),),
            wrong=(_num(factor * 10), _num(factor / 10)),
            reference=f"There are {_num(factor)} {to} in a {singular}.",
        )
        for n in b.rng.sample(range(2, 13), 3):
            q = b.rng.choice(CONVERSION_TEMPLATES).format(n=n, frm=frm, to=to)
            ans = n * factor
            wrong = {ans * 10, ans / 10, n + factor, ans + factor} - {ans, n, factor}
            b.add(
                "conversion",
                q,
                answers=(_num(ans),),
                wrong=[_num(w) for w in sorted(wrong)],
                reference=f"{n} {frm} is {_num(ans)} {to}. Each {singular} is {_num(factor)} {to}, and "
                f"{n} times {_num(factor)} is {_num(ans)}.",
            )
    for c in (0, 10, 20, 25, 30, 37, 100):
        f = c * 9 / 5 + 32
        b.add(
            "conversion",
            f"What is {c} degrees Celsius in Fahrenheit?",
            answers=(_num(f),),
            wrong=[_num(w) for w in {c * 9 / 5, (c - 32) * 5 / 9, c + 32} - {f, c}],
            reference=f"{c} degrees Celsius is {_num(f)} degrees Fahrenheit. "
            f"Multiply by 9/5 and add 32 to get {_num(f)}.",
        )


def _explanations(b: _Builder) -> None:
    def groups(spec: str) -> list[list[str]]:
        return [[v.strip() for v in g.split("|")] for g in spec.split(",")]

    for question, terms, reference, wrong in X.HOWTO:
        b.add("howto", question, key_terms=groups(terms), wrong=wrong, reference=reference)
    for term, terms, reference, wrong in X.DEFINITIONS:
        q = b.rng.choice(X.DEFINITION_TEMPLATES).format(term=term)
        b.add("definition", q, key_terms=groups(terms), wrong=wrong, reference=reference)


def build_items(seed: int = SEED) -> list[Item]:
    """Every item, deterministically from ``seed``."""
    b = _Builder(random.Random(seed))
    for problem in arithmetic.problems(random.Random(seed + 1)):
        b.add(
            "arithmetic",
            problem.question,
            answers=(_num(problem.answer),),
            wrong=[_num(w) for w in problem.wrong],
            reference=problem.reference,
        )
    _facts(b)
    _conversions(b)
    _explanations(b)
    return b.items


def write(path: Path = DATA_FILE, seed: int = SEED) -> int:
    items = build_items(seed)
    path.write_text("".join(item.to_json() + "\n" for item in items), encoding="utf-8")
    return len(items)


@lru_cache(maxsize=1)
def load_items() -> tuple[Item, ...]:
    """The shipped data set (questions.jsonl), or the same items built in memory if the file is absent."""
    if not DATA_FILE.exists():
        return tuple(build_items())
    with DATA_FILE.open(encoding="utf-8") as fh:
        return tuple(Item.from_dict(json.loads(line)) for line in fh if line.strip())


def items_in(split: str = "all") -> tuple[Item, ...]:
    """``"all"``, ``"train"`` or ``"heldout"``."""
    if split not in ("all", "train", "heldout"):
        raise ValueError(f"split must be all, train or heldout, got {split!r}")
    return tuple(i for i in load_items() if split == "all" or i.split == split)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_FILE
    print(f"wrote {write(out)} items to {out}")
