"""The assistant's shipped questions: a few hundred, no duplicates, every computed
answer right (recomputed here from the question text alone), references judged
good, the committed file what the builder writes."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import pytest

from assistant.dataset import DATA_FILE, HELDOUT_SHARE, build_items, items_in, load_items
from assistant.judge import judge
from assistant.text import same_number

ITEMS = load_items()


def test_a_few_hundred_items_in_every_category():
    counts = Counter(item.category for item in ITEMS)
    assert 300 <= len(ITEMS) <= 600, counts
    minimum = {"arithmetic": 100, "conversion": 30, "capital": 30, "chemistry": 30, "planet": 10, "author": 20,
               "howto": 20, "definition": 20}  # fmt: skip
    assert {c: counts[c] for c in minimum} == {c: max(counts[c], n) for c, n in minimum.items()}, counts


def test_no_duplicates():
    assert len({item.id for item in ITEMS}) == len(ITEMS)
    questions = [" ".join(item.question.lower().split()) for item in ITEMS]
    assert len(set(questions)) == len(questions)


def test_the_committed_file_is_what_the_builder_writes():
    assert DATA_FILE.exists()
    assert tuple(build_items()) == ITEMS


def test_heldout_split_by_hash():
    heldout = items_in("heldout")
    assert 0.5 * HELDOUT_SHARE <= len(heldout) / len(ITEMS) <= 1.5 * HELDOUT_SHARE
    assert len(items_in("train")) + len(heldout) == len(ITEMS)
    for item in ITEMS:
        digest = hashlib.sha256(f"{item.category}:{item.question}".encode()).hexdigest()
        assert item.split == ("heldout" if int(digest[:8], 16) / 0xFFFFFFFF < HELDOUT_SHARE else "train")
    with pytest.raises(ValueError):
        items_in("test")


def test_every_item_is_complete_and_its_reference_is_judged_good():
    for item in ITEMS:
        assert item.messages[-1]["role"] == "user" and item.question.strip(), item
        assert item.answers or item.key_terms, item
        assert not set(item.answers) & set(item.wrong), item
        verdict = judge(item, item.reference)
        assert verdict.good, (item.question, item.reference, verdict)


_N = r"(-?[\d,.]+)"
_PATTERNS = [
    (rf"{_N} (?:plus|\+) {_N}\?|Add {_N} and {_N}\.|sum of {_N} and {_N}", lambda a, b: a + b),
    (rf"{_N} (?:minus|-) {_N}\?", lambda a, b: a - b),
    (rf"Subtract {_N} from {_N}", lambda b, a: a - b),
    (rf"{_N} (?:times|multiplied by|×|x) {_N}|product of {_N} and {_N}", lambda a, b: a * b),
    (rf"{_N} (?:divided by|/) {_N}", lambda a, b: a / b),
    (rf"{_N}% of {_N}\?", lambda p, n: p * n / 100),
    (rf"(?:What is {_N} squared|square of {_N})", lambda a: a * a),
    (rf"has {_N} \w+ and buys {_N} more", lambda a, b: a + b),
    (rf"had {_N} \w+ and gave {_N}", lambda a, b: a - b),
    (rf"box holds {_N} \w+\. How many \w+ are there in {_N} full", lambda a, b: a * b),
    (rf"shares {_N} \w+ equally among {_N}", lambda n, b: n / b),
    (rf"at {_N} kilometers per hour for {_N} hours", lambda a, b: a * b),
    (rf"earns {_N} dollars an hour and works {_N} hours", lambda a, b: a * b),
    (rf"{_N} cm long and {_N} cm wide", lambda a, b: a * b),
    (rf"costs {_N} dollars and is on sale for {_N}% off", lambda p, pct: p * (100 - pct) / 100),
    (rf"reads {_N} pages a day\. How many pages does \w+ read in {_N} days", lambda a, b: a * b),
    (rf"has {_N} students and {_N} are absent", lambda a, b: a - b),
]


def _recompute(question: str) -> float:
    for pattern, op in _PATTERNS:
        match = re.search(pattern, question)
        if match:
            numbers = [float(g.rstrip(".").replace(",", "")) for g in match.groups() if g is not None]
            return op(*numbers)
    raise AssertionError(f"no recomputation for {question!r}")


def test_every_arithmetic_answer_is_correct():
    arithmetic = [item for item in ITEMS if item.category == "arithmetic"]
    for item in arithmetic:
        assert same_number(float(item.answers[0]), _recompute(item.question)), item.question


FACTORS = {("meters", "centimeters"): 100, ("kilometers", "meters"): 1000, ("kilograms", "grams"): 1000,
           ("hours", "minutes"): 60, ("minutes", "seconds"): 60, ("days", "hours"): 24, ("weeks", "days"): 7,
           ("feet", "inches"): 12, ("yards", "feet"): 3, ("liters", "milliliters"): 1000,
           ("centimeters", "millimeters"): 10}  # fmt: skip
SINGULAR = {"meter": "meters", "kilometer": "kilometers", "kilogram": "kilograms", "hour": "hours",
            "minute": "minutes", "day": "days", "week": "weeks", "foot": "feet", "yard": "yards",
            "liter": "liters", "centimeter": "centimeters"}  # fmt: skip


def _convert(question: str) -> float:
    if m := re.match(r"What is (\d+) degrees Celsius in Fahrenheit\?", question):
        return int(m.group(1)) * 9 / 5 + 32
    if m := re.match(r"How many (\w+) are in a (\w+)\?", question):
        return FACTORS[(SINGULAR[m.group(2)], m.group(1))]
    m = (
        re.match(r"How many (?P<to>\w+) are in (?P<n>\d+) (?P<frm>\w+)\?", question)
        or re.match(r"Convert (?P<n>\d+) (?P<frm>\w+) to (?P<to>\w+)\.", question)
        or re.match(r"What is (?P<n>\d+) (?P<frm>\w+) in (?P<to>\w+)\?", question)
    )
    assert m, question
    return int(m["n"]) * FACTORS[(m["frm"], m["to"])]


def test_every_conversion_answer_is_correct():
    for item in (i for i in ITEMS if i.category == "conversion"):
        assert same_number(float(item.answers[0]), _convert(item.question)), item.question
