"""Arithmetic questions with computed answers: bare sums, differences, products,
quotients, percentages and squares, and short word problems. Each comes with
the mistakes a model tends to make (off by one or ten, the wrong operation)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from assistant.text import numbers_in, same_number


@dataclass(frozen=True)
class Problem:
    question: str
    answer: float
    wrong: tuple[float, ...]
    reference: str


NAMES = ("Sam", "Maria", "Ali", "Priya", "Tom", "Chen", "Lucy", "Omar", "Nina", "Jack", "Aisha", "Leo")
THINGS = ("apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "cards")


def _wrong(answer: float, operands: Iterable[float], *candidates: float) -> tuple[float, ...]:
    banned = {answer, *operands}
    return tuple(sorted({c for c in candidates if c not in banned and c >= 0}))


def _bare(rng: random.Random) -> list[Problem]:
    out = []
    for _ in range(25):
        a, b = rng.randint(12, 999), rng.randint(12, 999)
        q = rng.choice(
            ("What is {a} plus {b}?", "What is {a} + {b}?", "Add {a} and {b}.", "What's the sum of {a} and {b}?")
        )
        s = a + b
        out.append(
            Problem(
                q.format(a=a, b=b),
                s,
                _wrong(s, (a, b), s + 1, s - 1, s + 10, s - 10),
                f"{a} plus {b} is {s}. Adding {b} to {a} gives {s}.",
            )
        )
    for _ in range(20):
        a, b = sorted((rng.randint(10, 999), rng.randint(10, 999)), reverse=True)
        if a == b:
            continue
        q = rng.choice(("What is {a} minus {b}?", "What is {a} - {b}?", "Subtract {b} from {a}."))
        d = a - b
        out.append(
            Problem(
                q.format(a=a, b=b),
                d,
                _wrong(d, (a, b), d + 1, d - 1, d + 10, d - 10, a + b),
                f"{a} minus {b} is {d}. Taking {b} away from {a} leaves {d}.",
            )
        )
    for _ in range(35):
        a, b = rng.randint(3, 99), rng.randint(3, 30)
        q = rng.choice(
            (
                "What is {a} times {b}?",
                "What is {a} multiplied by {b}?",
                "What is {a} × {b}?",
                "Calculate {a} x {b}.",
                "What's the product of {a} and {b}?",
            )
        )
        p = a * b
        out.append(
            Problem(
                q.format(a=a, b=b),
                p,
                _wrong(p, (a, b), p + a, p - a, p + b, p - b, a + b, p + 10, p - 10),
                f"{a} times {b} is {p}. Multiplying {a} by {b} gives {p}.",
            )
        )
    for _ in range(20):
        b, quotient = rng.randint(2, 25), rng.randint(3, 60)
        n = b * quotient
        q = rng.choice(("What is {n} divided by {b}?", "What is {n} / {b}?", "How much is {n} divided by {b}?"))
        out.append(
            Problem(
                q.format(n=n, b=b),
                quotient,
                _wrong(quotient, (n, b), quotient + 1, quotient - 1, n - b),
                f"{n} divided by {b} is {quotient}. {b} goes into {n} exactly {quotient} times.",
            )
        )
    for _ in range(15):
        pct = rng.choice((5, 10, 15, 20, 25, 30, 40, 50, 75))
        n = rng.choice(range(20, 420, 20))
        v = pct * n / 100
        out.append(
            Problem(
                f"What is {pct}% of {n}?",
                v,
                _wrong(v, (pct, n), pct * n, n - v, v + 1, v * 10),
                f"{pct}% of {n} is {v:g}. Take {n}, multiply by {pct}, divide by a hundred: {v:g}.",
            )
        )
    for _ in range(10):
        a = rng.randint(11, 40)
        q = rng.choice(("What is {a} squared?", "What is the square of {a}?"))
        out.append(
            Problem(
                q.format(a=a),
                a * a,
                _wrong(a * a, (a,), 2 * a, a * a + 1, a * a - 1, a * a + 10),
                f"{a} squared is {a * a}. That is {a} times {a}, which is {a * a}.",
            )
        )
    return out


WordProblem = Callable[[random.Random, str, str], Problem]


def _buy(rng: random.Random, name: str, things: str) -> Problem:
    a, b = rng.randint(5, 60), rng.randint(3, 40)
    return Problem(
        f"{name} has {a} {things} and buys {b} more. How many {things} does {name} have now?",
        a + b,
        _wrong(a + b, (a, b), a + b + 1, a + b - 1, abs(a - b), a * b),
        f"{name} has {a + b} {things} now. {a} plus {b} is {a + b}.",
    )


def _give(rng: random.Random, name: str, things: str) -> Problem:
    a = rng.randint(20, 90)
    b = rng.randint(3, a - 5)
    return Problem(
        f"{name} had {a} {things} and gave {b} of them to a friend. How many {things} are left?",
        a - b,
        _wrong(a - b, (a, b), a + b, a - b + 1, a - b - 1),
        f"{name} has {a - b} {things} left. {a} minus {b} is {a - b}.",
    )


def _boxes(rng: random.Random, name: str, things: str) -> Problem:
    a, b = rng.randint(4, 30), rng.randint(3, 15)
    return Problem(
        f"A box holds {a} {things}. How many {things} are there in {b} full boxes?",
        a * b,
        _wrong(a * b, (a, b), a + b, a * b + a, a * b - a),
        f"There are {a * b} {things} in {b} boxes. {b} times {a} is {a * b}.",
    )


def _share(rng: random.Random, name: str, things: str) -> Problem:
    b, each = rng.randint(2, 9), rng.randint(3, 15)
    n = b * each
    return Problem(
        f"{name} shares {n} {things} equally among {b} friends. How many {things} does each friend get?",
        each,
        _wrong(each, (n, b), each + 1, each - 1, n - b),
        f"Each friend gets {each} {things}. {n} divided by {b} is {each}.",
    )


def _train(rng: random.Random, name: str, things: str) -> Problem:
    a, b = rng.choice(range(40, 130, 10)), rng.randint(2, 6)
    return Problem(
        f"A train travels at {a} kilometers per hour for {b} hours. How far does it go?",
        a * b,
        _wrong(a * b, (a, b), a + b, a * b + a, a * b - a),
        f"The train goes {a * b} kilometers. {a} times {b} is {a * b}.",
    )


def _wage(rng: random.Random, name: str, things: str) -> Problem:
    a, b = rng.randint(12, 30), rng.randint(4, 12)
    return Problem(
        f"{name} earns {a} dollars an hour and works {b} hours. How much does {name} earn?",
        a * b,
        _wrong(a * b, (a, b), a + b, a * b + a, a * b - a),
        f"{name} earns {a * b} dollars. {a} times {b} is {a * b}.",
    )


def _area(rng: random.Random, name: str, things: str) -> Problem:
    a, b = rng.randint(3, 25), rng.randint(3, 25)
    return Problem(
        f"A rectangle is {a} cm long and {b} cm wide. What is its area in square centimeters?",
        a * b,
        _wrong(a * b, (a, b), 2 * (a + b), a + b, a * b + 1),
        f"The area is {a * b} square centimeters. {a} times {b} is {a * b}.",
    )


def _sale(rng: random.Random, name: str, things: str) -> Problem:
    price, pct = rng.choice(range(20, 220, 20)), rng.choice((10, 25, 50))
    v = price * (100 - pct) / 100
    return Problem(
        f"A jacket costs {price} dollars and is on sale for {pct}% off. What is the sale price?",
        v,
        _wrong(v, (price, pct), price - pct, price * pct / 100, price + price * pct / 100),
        f"The sale price is {v:g} dollars. Taking {pct}% off {price} dollars leaves {v:g}.",
    )


def _pages(rng: random.Random, name: str, things: str) -> Problem:
    a, b = rng.randint(8, 40), rng.randint(3, 14)
    return Problem(
        f"{name} reads {a} pages a day. How many pages does {name} read in {b} days?",
        a * b,
        _wrong(a * b, (a, b), a + b, a * b + a, a * b - a),
        f"{name} reads {a * b} pages. {a} times {b} is {a * b}.",
    )


def _absent(rng: random.Random, name: str, things: str) -> Problem:
    a = rng.randint(18, 35)
    b = rng.randint(2, 7)
    return Problem(
        f"A class has {a} students and {b} are absent today. How many students are in class?",
        a - b,
        _wrong(a - b, (a, b), a + b, a - b + 1, a - b - 1),
        f"{a - b} students are in class. {a} minus {b} is {a - b}.",
    )


WORD_PROBLEMS: tuple[WordProblem, ...] = (_buy, _give, _boxes, _share, _train, _wage, _area, _sale, _pages, _absent)


def problems(rng: random.Random, per_word_template: int = 5) -> list[Problem]:
    """Every arithmetic problem, deterministic given ``rng``'s seed."""
    out = _bare(rng)
    for make in WORD_PROBLEMS:
        for _ in range(per_word_template):
            out.append(make(rng, rng.choice(NAMES), rng.choice(THINGS)))
    # An answer that repeats a number of the question cannot be told from restating it.
    return [p for p in out if not any(same_number(p.answer, n) for n in numbers_in(p.question))]
