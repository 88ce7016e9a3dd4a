"""The assistant's judge: for a (prompt, response), is the answer correct, and is it clean?

- correct: for arithmetic and conversions, the right number is the last one
  stated (numbers the question gave may be repeated) and no known wrong result
  appears; for facts, an accepted answer is present and no wrong one (another
  capital, another planet, a look-alike symbol); for how-to questions and
  definitions, enough of the key terms (:data:`KEY_TERM_SHARE`) and no known
  misconception. A refusal is never correct.
- clean: no needless refusal, little repetition, no garbage characters or
  leaked special tokens, a finished last sentence, and not rambling (at most
  :data:`MAX_CLEAN_WORDS` words). Small talk is a matter of taste (users
  disagree on it), so it does not make an answer unclean.

:func:`gate_judge` is the trainer's judge plug-in
(``--gate-judge assistant.judge:gate_judge``); the platform passes prompts as
it logged them (raw, or rendered by a chat template) and never imports this
module itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

from assistant import text as T
from assistant.dataset import Item, load_items

KEY_TERM_SHARE = 0.6
MAX_CLEAN_WORDS = 200
MAX_REPETITION = 0.2
MAX_DEGENERATION = 0.3
# The last user turn of a prompt rendered by a chat template (ChatML, Llama 2/3, Gemma, Phi, plain "User:").
_USER_TURN = (
    re.compile(r"<\|im_start\|>user\s*\n(.*?)<\|im_end\|>", re.S),
    re.compile(r"<\|start_header_id\|>user<\|end_header_id\|>\s*(.*?)<\|eot_id\|>", re.S),
    re.compile(r"<start_of_turn>user\s*\n(.*?)<end_of_turn>", re.S),
    re.compile(r"<\|user\|>\s*(.*?)(?:<\|end\|>|<\|assistant\|>)", re.S),
    re.compile(r"\[INST\]\s*(.*?)\s*\[/INST\]", re.S),
    re.compile(r"(?:^|\n)(?:User|Question):\s*(.*?)\s*(?:\n(?:Assistant|Answer):|$)", re.S),
)


@dataclass(frozen=True)
class Verdict:
    correct: bool
    clean: bool
    refusal: bool = False
    small_talk: int = 0
    repetition: float = 0.0
    degeneration: float = 0.0
    words: int = 0

    @property
    def good(self) -> bool:
        return self.correct and self.clean

    def to_dict(self) -> dict:
        return {**asdict(self), "good": self.good}


@lru_cache(maxsize=1)
def _index() -> dict[str, Item]:
    return {_key(item.question): item for item in load_items()}


def _key(question: str) -> str:
    return " ".join(T.fold(question).split())


def find_item(prompt: str) -> Item | None:
    """The data set's item a prompt asks: the question itself, or a chat rendering of it."""
    index = _index()
    candidates = [prompt] + [m.group(1) for pattern in _USER_TURN for m in pattern.finditer(prompt)][::-1]
    for candidate in candidates:
        found = index.get(_key(candidate))
        if found is not None:
            return found
    folded = _key(prompt)
    # Last resort: the longest question contained in the prompt (a template this module does not know).
    hits = [item for key, item in index.items() if key in folded]
    return max(hits, key=lambda i: len(i.question)) if hits else None


def is_correct(item: Item, response: str) -> bool:
    if T.is_refusal(response) and not _answers_anyway(item, response):
        return False
    if item.numeric:
        wrong = [float(w) for w in item.wrong]
        return any(T.numeric_verdict(response, float(a), item.question, wrong) for a in item.answers)
    if item.key_terms:
        needed = max(1, round(KEY_TERM_SHARE * len(item.key_terms)))
        covered = sum(T.has_phrase(response, group) for group in item.key_terms)
        return covered >= needed and not T.has_phrase(response, item.wrong)
    cs = item.case_sensitive
    return T.has_phrase(response, item.answers, case_sensitive=cs) and not T.has_phrase(
        response, item.wrong, case_sensitive=cs
    )


def _answers_anyway(item: Item, response: str) -> bool:
    """ "I'm sorry, but the capital is Paris": an apology is not a refusal if the answer follows."""
    return T.has_phrase(response, item.answers, case_sensitive=item.case_sensitive) if item.answers else False


def judge(item: Item | str, response: str) -> Verdict:
    """Label ``response`` to ``item`` (an Item, or a prompt as the policy logged it).
    Raises KeyError for a prompt that is not one of the data set's questions."""
    if isinstance(item, str):
        found = find_item(item)
        if found is None:
            raise KeyError(f"not a question of the assistant data set: {item[:80]!r}")
        item = found
    refusal = T.is_refusal(response) and not _answers_anyway(item, response)
    rep, deg, words = T.repetition(response), T.degeneration(response), T.word_count(response)
    clean = not refusal and rep <= MAX_REPETITION and deg <= MAX_DEGENERATION and 0 < words <= MAX_CLEAN_WORDS
    return Verdict(
        correct=is_correct(item, response),
        clean=clean,
        refusal=refusal,
        small_talk=T.small_talk_count(response),
        repetition=rep,
        degeneration=deg,
        words=words,
    )


def gate_judge(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """1.0 where the response is correct and clean, else 0.0; NaN for a prompt that is
    not one of the data set's questions (the trainer skips those)."""
    scores = []
    for prompt, response in zip(prompts, responses):
        try:
            scores.append(1.0 if judge(prompt, response).good else 0.0)
        except KeyError:
            scores.append(float("nan"))
    return scores
