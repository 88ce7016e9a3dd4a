"""Reading free text the way the simulated users and the judge do: answers
(tolerant phrase matching, numbers in digits or words), small talk, needless
refusals, repetition and degeneration. Pure functions, no randomness."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache

SMALL_TALK = (
    "great question", "good question", "excellent question", "what a great", "thanks for asking",
    "hope this helps", "hope that helps", "happy to help", "glad to help", "i'd be happy to", "i would be happy to",
    "let me know if you have any other questions", "let me know if you need anything else", "feel free to ask",
    "sure!", "of course!", "certainly!", "absolutely!", "have a great day", "have a nice day",
)  # fmt: skip
REFUSALS = (
    "i'm sorry, but", "i am sorry, but", "i apologize, but", "i can't help", "i cannot help", "i can't assist",
    "i cannot assist", "i can't provide", "i cannot provide", "i can't answer", "i cannot answer",
    "i'm not able to", "i am not able to", "i'm unable to", "i am unable to", "as an ai", "as a language model",
    "i don't have the ability", "i do not have the ability", "i'm just an ai",
)  # fmt: skip
_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = {w: i for i, w in enumerate(_UNITS)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}
SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_DIGITS = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])")
_WORD = re.compile(r"[a-z]+")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Characters an answer may contain: letters, digits, whitespace, ordinary punctuation and symbols.
_ALLOWED_PUNCT = set(".,;:!?'\"()[]{}-–—/&%$€£+*=×÷°#@_<>~^|\\…’‘“”•")
_LEAKED_MARKUP = re.compile(r"<\|[^|>]*\|?>?|</?s>|\[/?INST\]|<unk>|\ufffd")
FINISHING = set(".!?)\"'”’…:*`")


def fold(text: str, *, case_sensitive: bool = False) -> str:
    """Accents stripped, curly quotes straightened, lower-cased unless ``case_sensitive``."""
    text = unicodedata.normalize("NFKD", text.replace("\u2019", "'").replace("\u2018", "'"))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return text if case_sensitive else text.lower()


@lru_cache(maxsize=8192)
def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    parts = [re.escape(p) for p in re.split(r"[\s\-]+", phrase.strip()) if p]
    return re.compile(r"(?<![A-Za-z0-9])" + r"[\s\-]+".join(parts) + r"(?![A-Za-z0-9])")


def has_phrase(text: str, phrases: Iterable[str], *, case_sensitive: bool = False) -> bool:
    """Whether any phrase occurs in ``text`` as whole words (spaces and hyphens interchangeable)."""
    folded = fold(text, case_sensitive=case_sensitive)
    return any(_phrase_pattern(fold(p, case_sensitive=case_sensitive)).search(folded) for p in phrases if p.strip())


def _word_numbers(text: str) -> list[tuple[int, float]]:
    """(position, value) of numbers written in words: "three hundred ninety-one". A lone
    "one" is skipped (it is usually a pronoun: "the right one")."""
    out: list[tuple[int, float]] = []
    run: list[str] = []
    start = 0

    def flush() -> None:
        if run and run != ["one"]:
            total, current = 0, 0
            for word in run:
                if word in SCALES:
                    current = max(current, 1) * SCALES[word]
                    if SCALES[word] >= 1000:
                        total, current = total + current, 0
                else:
                    current += NUMBER_WORDS[word]
            out.append((start, float(total + current)))
        run.clear()

    for match in _WORD.finditer(text):
        word = match.group()
        if word in NUMBER_WORDS or word in SCALES:
            if not run:
                start = match.start()
            run.append(word)
        elif not (word == "and" and run):
            flush()
    flush()
    return out


def numbers_in(text: str) -> list[float]:
    """Every number in ``text``, in order: digits ("1,234", "12.5", "-3") and words ("twenty-one")."""
    folded = fold(text)
    found = [(m.start(), float(m.group().replace(",", ""))) for m in _DIGITS.finditer(folded)]
    found += _word_numbers(folded)
    return [value for _, value in sorted(found)]


def same_number(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b)) or round(a, 2) == round(b, 2)


def numeric_verdict(response: str, target: float, question: str, wrong: Sequence[float] = ()) -> bool:
    """The number ``target`` is stated, it is the last number stated that is not just a
    number of the question repeated, and none of the known wrong results appears."""
    given = set(numbers_in(question))
    stated = [x for x in numbers_in(response) if not any(same_number(x, q) for q in given)]
    if not stated or not same_number(stated[-1], target):
        return False
    return not any(same_number(x, w) for x in stated for w in wrong)


def term_coverage(response: str, groups: Sequence[Sequence[str]]) -> float:
    """Share of key-term groups (each a tuple of accepted variants) the response mentions."""
    if not groups:
        return 0.0
    return sum(has_phrase(response, group) for group in groups) / len(groups)


def small_talk_count(response: str) -> int:
    folded = fold(response)
    return sum(folded.count(phrase) for phrase in SMALL_TALK)


def is_refusal(response: str) -> bool:
    folded = fold(response)
    return any(marker in folded for marker in REFUSALS)


def word_count(response: str) -> int:
    return len(response.split())


def repetition(response: str, n: int = 3) -> float:
    """In [0, 1]: the share of repeated word n-grams, or of repeated sentences, whichever is higher."""
    tokens = _TOKEN.findall(fold(response))
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    gram_share = 1.0 - len(set(grams)) / len(grams) if len(grams) >= 4 else 0.0
    sentences = [s.strip() for s in re.split(r"[.!?\n]+", fold(response)) if len(s.split()) >= 3]
    sentence_share = 1.0 - len(set(sentences)) / len(sentences) if len(sentences) >= 2 else 0.0
    return max(gram_share, sentence_share)


def garbage_share(response: str) -> float:
    """In [0, 1]: the share of characters that no answer should contain (control
    characters, stray scripts' symbols, leaked special tokens, long punctuation runs)."""
    if not response.strip():
        return 1.0
    leaked = sum(len(m.group()) for m in _LEAKED_MARKUP.finditer(response))
    text = _LEAKED_MARKUP.sub("", response)
    odd = sum(1 for c in text if not (c.isalnum() or c.isspace() or c in _ALLOWED_PUNCT))
    runs = sum(len(m.group()) for m in re.finditer(r"([^\w\s.])\1{3,}|\.{5,}", text))
    return min(1.0, (leaked + odd + runs) / max(1, len(response)))


def unfinished(response: str) -> bool:
    """The last sentence stops mid-way (no closing punctuation). A bare answer of a
    few words ("Paris") is finished; so is a list or code block."""
    text = response.rstrip()
    if len(text.split()) <= 4:
        return False
    last_line = text.splitlines()[-1].lstrip()
    if re.match(r"^(?:[-*•]|\d+[.)])\s", last_line) and not last_line.endswith(","):
        return False
    return text[-1] not in FINISHING


def degeneration(response: str) -> float:
    """In [0, 1]: garbage characters (strongly) and an unfinished last sentence."""
    if not response.strip():
        return 1.0
    return min(1.0, 5.0 * garbage_share(response) + (0.6 if unfinished(response) else 0.0))


def sentences(text: str) -> list[str]:
    """Split a well-formed reference text into sentences (a full stop followed by a space)."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]
