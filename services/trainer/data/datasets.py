"""A user's own training data from JSONL files: demonstrations (SFT) and comparisons (reward model).

One JSON object per line; blank lines are skipped; extra fields are ignored
(datasets exported from other tools often carry ids or metadata).

Demonstrations (``rlhf sft --data``), one of two forms per line:

- ``{"prompt": "...", "response": "..."}``: non-empty strings;
- ``{"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}``:
  the last message is the assistant's reply (the response to learn); the
  earlier ones are rendered with the policy's chat template
  (:func:`shared.models.prompting.render_chat`, ending where the reply starts) into
  the prompt, so training sees the prompt exactly as serving renders it.

Comparisons (``rlhf train-reward --data``), the format TRL's reward trainer
and Anthropic's HH-RLHF use:

- ``{"prompt": "...", "chosen": "...", "rejected": "..."}``: chosen is the
  better response to prompt; chosen and rejected must differ;
- ``{"chosen": "...", "rejected": "..."}`` without a prompt (Anthropic HH):
  chosen and rejected are whole dialogues (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``)
  sharing a prefix. The prompt is that common prefix up to and including its
  last ``"\\n\\nAssistant:"``; the responses are what follows, stripped.

Every line is checked before anything trains, and every bad line is reported
(up to :data:`MAX_REPORTED_PROBLEMS`) in one :class:`DataFileError`, each as
``FILE:LINE: field 'x': what is wrong and what to do``, so a file is fixed in
one go. :func:`heldout_split` then keeps a deterministic slice of prompts out
of training for honest before/after metrics.

No torch and no grpc here: a tokenizer is any Hugging Face tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shared.models.prompting import CHAT_ROLES, ChatMessage, PromptError, has_chat_template, render_chat

MAX_REPORTED_PROBLEMS = 20
HH_ASSISTANT_MARKER = "\n\nAssistant:"
DEMONSTRATION_EXAMPLE = '{"prompt": "How do I boil an egg?", "response": "Simmer it for nine minutes."}'
COMPARISON_EXAMPLE = '{"prompt": "How do I boil an egg?", "chosen": "Simmer it for nine minutes.", "rejected": "No."}'

T = TypeVar("T")


class DataFileError(ValueError):
    """A data file that cannot be trained on; ``problems`` holds one line per
    problem (``FILE:LINE: field 'x': ...``), ``more`` how many were not listed."""

    def __init__(self, problems: Sequence[str], more: int = 0):
        self.problems = list(problems)
        self.more = more
        text = "\n".join(self.problems)
        if more:
            text += f"\n... and {more} more bad lines (only the first {len(self.problems)} are listed)"
        super().__init__(text)


class _LineError(Exception):
    """One line's problem; ``field`` is empty when the line as a whole is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Demonstration:
    """A prompt and the response the policy should learn, from line ``line`` of the file."""

    prompt: str
    response: str
    line: int

    def as_pair(self) -> tuple[str, str]:
        return self.prompt, self.response


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a better (chosen) and a worse (rejected) response, from line ``line``."""

    prompt: str
    chosen: str
    rejected: str
    line: int

    def as_triple(self) -> tuple[str, str, str]:
        return self.prompt, self.chosen, self.rejected


def load_demonstrations(path: str | os.PathLike[str], tokenizer=None) -> list[Demonstration]:
    """Every demonstration in ``path``; raises DataFileError listing the bad lines.

    ``tokenizer`` (the policy's) renders ``messages`` lines; without one, or
    when it has no chat template, such lines are reported as errors."""
    form = "`prompt` and `response` strings, or `messages`"
    parsed = _load_jsonl(
        Path(path),
        lambda record: _parse_demonstration(record, tokenizer),
        "demonstrations",
        DEMONSTRATION_EXAMPLE,
        form,
    )
    return [Demonstration(prompt, response, line) for line, (prompt, response) in parsed]


def load_comparisons(path: str | os.PathLike[str]) -> list[PreferencePair]:
    """Every comparison in ``path``; raises DataFileError listing the bad lines."""
    form = "`prompt`, `chosen` and `rejected` strings (or HH dialogues in `chosen`/`rejected`)"
    parsed = _load_jsonl(Path(path), _parse_comparison, "comparisons", COMPARISON_EXAMPLE, form)
    return [PreferencePair(prompt, chosen, rejected, line) for line, (prompt, chosen, rejected) in parsed]


def _load_jsonl(path: Path, parse: Callable[[dict], T], what: str, example: str, form: str) -> list[tuple[int, T]]:
    """(line number, parse(record)) for every non-blank line, or DataFileError with every problem."""
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise DataFileError([f"{path}: cannot read the data file: {exc.strerror or exc}"]) from exc
    items: list[tuple[int, T]] = []
    problems: list[str] = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                f"{path}:{number}: is not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8"
            )
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
        if not text.strip():
            continue
        try:
            items.append((number, parse(_json_object(text, example))))
        except _LineError as exc:
            where = f"{path}:{number}: field '{exc.field}'" if exc.field else f"{path}:{number}"
            problems.append(f"{where}: {exc.message}")
    if problems:
        shown = problems[:MAX_REPORTED_PROBLEMS]
        raise DataFileError(shown, more=len(problems) - len(shown))
    if not items:
        raise DataFileError(
            [
                f"{path}: holds no {what} (the file is empty or has only blank lines); "
                f"write one JSON object per line with {form}, e.g. {example}"
            ]
        )
    return items


def _json_object(text: str, example: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _LineError(
            "",
            f"is not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object, e.g. {example}",
        ) from None
    if not isinstance(record, dict):
        raise _LineError(
            "", f"is a JSON {_json_type(record)}, not an object; each line must be one JSON object, e.g. {example}"
        )
    return record


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _text(record: dict, field: str, missing_hint: str, *, label: str | None = None) -> str:
    """``record[field]`` as a non-empty string, else a _LineError naming ``label`` (default: field)."""
    label = label or field
    if field not in record:
        raise _LineError(label, f"is missing; {missing_hint}")
    value = record[field]
    if not isinstance(value, str):
        raise _LineError(label, f"must be a string, got a JSON {_json_type(value)}")
    if not value.strip():
        raise _LineError(label, "is empty; give it text, or delete the line")
    return value


# --- demonstrations ---------------------------------------------------------

_DEMO_HINT = (
    "each line needs `prompt` and `response` strings, or `messages` "
    "(a list of {role, content} ending with the assistant's reply)"
)


def _parse_demonstration(record: dict, tokenizer) -> tuple[str, str]:
    if "messages" in record:
        if "prompt" in record or "response" in record:
            raise _LineError(
                "messages",
                "is given together with `prompt`/`response`; use one form per line: "
                "`prompt` + `response`, or `messages`",
            )
        return _demonstration_from_messages(record["messages"], tokenizer)
    return _text(record, "prompt", _DEMO_HINT), _text(record, "response", _DEMO_HINT)


def _demonstration_from_messages(messages: Any, tokenizer) -> tuple[str, str]:
    """(prompt rendered with the chat template, the last message's content)."""
    if not isinstance(messages, list):
        raise _LineError("messages", f"must be a list of {{role, content}} objects, got a JSON {_json_type(messages)}")
    if len(messages) < 2:
        raise _LineError(
            "messages",
            f"has {len(messages)} message(s); it needs the conversation so far "
            "(at least one message) and then the assistant's reply",
        )
    chat = [_chat_message(message, i) for i, message in enumerate(messages)]
    last = len(chat) - 1
    if chat[last].role != "assistant":
        raise _LineError(
            f"messages[{last}].role",
            f"is {chat[last].role!r}; the last message must be the assistant's reply (the response to learn)",
        )
    if tokenizer is None or not has_chat_template(tokenizer):
        raise _LineError(
            "messages",
            "cannot be rendered: the policy's tokenizer has no chat template "
            "(tokenizer_config.json chat_template); write this line as `prompt` + `response` text",
        )
    try:
        prompt = render_chat(tokenizer, chat[:last], add_generation_prompt=True)
    except PromptError as exc:
        raise _LineError(exc.field, exc.message) from None
    except Exception as exc:  # noqa: BLE001 - a template may raise anything (e.g. "roles must alternate")
        raise _LineError("messages", f"the policy's chat template refused this conversation: {exc}") from None
    return prompt, chat[last].content


def _chat_message(message: Any, index: int) -> ChatMessage:
    field = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _LineError(field, f"must be an object with `role` and `content`, got a JSON {_json_type(message)}")
    hint = f"each message needs `role` ({', '.join(CHAT_ROLES)}) and `content`"
    role = _text(message, "role", hint, label=f"{field}.role")
    if role not in CHAT_ROLES:
        raise _LineError(f"{field}.role", f"is {role!r}; expected one of {', '.join(CHAT_ROLES)}")
    return ChatMessage(role, _text(message, "content", hint, label=f"{field}.content"))


# --- comparisons ------------------------------------------------------------

_PAIR_HINT = (
    "each line needs `prompt`, `chosen` and `rejected` strings "
    "(or, without `prompt`, Anthropic HH dialogues in `chosen` and `rejected`)"
)


def _parse_comparison(record: dict) -> tuple[str, str, str]:
    if "prompt" in record:
        prompt = _text(record, "prompt", _PAIR_HINT)
        chosen, rejected = _text(record, "chosen", _PAIR_HINT), _text(record, "rejected", _PAIR_HINT)
    else:
        prompt, chosen, rejected = split_hh_dialogues(
            _text(record, "chosen", _PAIR_HINT), _text(record, "rejected", _PAIR_HINT)
        )
    if chosen.strip() == rejected.strip():
        raise _LineError(
            "rejected",
            "is the same text as `chosen`; a comparison needs two different responses, so fix or delete the line",
        )
    return prompt, chosen, rejected


def split_hh_dialogues(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen reply, rejected reply) from two Anthropic HH dialogues.

    The prompt is their common prefix up to and including its last
    ``"\\n\\nAssistant:"`` (so it ends where the replies start, as a policy
    prompt does); the replies are the rest of each dialogue, stripped."""
    common = os.path.commonprefix([chosen, rejected])
    marker = common.rfind(HH_ASSISTANT_MARKER)
    if marker < 0:
        raise _LineError(
            "prompt",
            "is missing, and `chosen`/`rejected` are not Anthropic HH dialogues sharing "
            "a prefix that ends in '\\n\\nAssistant:'; add a `prompt` field and keep only the "
            "responses in `chosen` and `rejected`",
        )
    end = marker + len(HH_ASSISTANT_MARKER)
    replies = {"chosen": chosen[end:].strip(), "rejected": rejected[end:].strip()}
    for field, reply in replies.items():
        if not reply:
            raise _LineError(
                field,
                "has no reply after the last '\\n\\nAssistant:' the two dialogues share; "
                "give each dialogue its own final assistant reply",
            )
    return chosen[:end], replies["chosen"], replies["rejected"]


# --- held-out split ---------------------------------------------------------


def _prompt_hash(prompt: str) -> float:
    """A stable number in [0, 1) for a prompt, case- and whitespace-folded."""
    key = " ".join(prompt.lower().split())
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


def heldout_split(items: Sequence[T], prompt_of: Callable[[T], str], fraction: float) -> tuple[list[T], list[T]]:
    """(training, held-out) items: a prompt is held out when its hash falls
    below ``fraction``, so reruns and edits of the file agree, and every item
    of one prompt lands on the same side (a held-out prompt is never trained on).

    At least one prompt is held out and at least one trained on; raises
    ValueError when the items do not have two distinct prompts."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be between 0 and 1 (exclusive), got {fraction}")
    hashes = {prompt_of(item): _prompt_hash(prompt_of(item)) for item in items}
    distinct = sorted(set(hashes.values()))
    if len(distinct) < 2:
        raise ValueError(
            "every item has the same prompt; the held-out split is by prompt, so the file needs "
            "at least 2 distinct prompts"
        )
    # Clamp the cut so that the smallest-hash prompt is always held out and the largest always trained on.
    cut = min(max(fraction, distinct[0] + 1e-12), distinct[-1])
    train = [item for item in items if hashes[prompt_of(item)] >= cut]
    heldout = [item for item in items if hashes[prompt_of(item)] < cut]
    return train, heldout
