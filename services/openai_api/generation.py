"""OpenAI chat and text completion requests → policy GenerateRequests.

Field by field (docs/ARCHITECTURE.md has the table): ``messages`` → messages
(the policy renders the model's chat template), ``prompt`` → prompt,
``max_tokens``/``max_completion_tokens`` → sampling.max_new_tokens,
``temperature``, ``top_p``, ``top_k`` (an extension), ``n`` →
num_return_sequences, ``stop``, ``seed``, ``user`` → user_id, ``metadata`` →
metadata (carried onto the GenerationEvent). Fields whose meaning we cannot
honour (logprobs, tools, penalties, JSON mode, ...) are refused with a 400
naming them unless their value is the one that changes nothing. No grpc here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.openai_api import fields as f
from services.openai_api.api_errors import ParamMap, invalid, missing, model_not_found, unsupported
from shared.proto.rlhf.v1 import common_pb2, policy_pb2

CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
MAX_USER_CHARS = 128  # the feedback gateway's limit on user ids, so feedback can name the same user
METADATA_LIMITS = {"max_entries": 16, "max_key_chars": 64, "max_value_chars": 512}  # OpenAI's own limits

# Fields read below, and fields accepted because they change nothing here (billing, storage, caching hints).
_SAMPLING_FIELDS = ("model", "temperature", "top_p", "top_k", "n", "stop", "seed", "user", "stream", "stream_options")
_IGNORED_FIELDS = ("store", "service_tier", "prompt_cache_key", "safety_identifier", "parallel_tool_calls")
_COMMON_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
}
_CHAT_NEUTRAL: dict[str, tuple[Any, ...]] = {
    **_COMMON_NEUTRAL,
    "logprobs": (False,),
    "top_logprobs": (0,),
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none", "auto"),
    "function_call": ("none", "auto"),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "reasoning_effort": (),
    "verbosity": (),
    "web_search_options": (),
}
_TEXT_NEUTRAL: dict[str, tuple[Any, ...]] = {
    **_COMMON_NEUTRAL,
    "logprobs": (0,),
    "echo": (False,),
    "suffix": ("",),
    "best_of": (1,),
}
_WHY = {
    "frequency_penalty": "the policy samples without repetition penalties; leave it at 0",
    "presence_penalty": "the policy samples without repetition penalties; leave it at 0",
    "logit_bias": "the policy does not bias logits",
    "logprobs": "the policy does not return log-probabilities",
    "top_logprobs": "the policy does not return log-probabilities",
    "tools": "the policy has no tool calling",
    "functions": "the policy has no function calling",
    "tool_choice": "the policy has no tool calling",
    "function_call": "the policy has no function calling",
    "response_format": "only plain text ({'type': 'text'}); no JSON mode",
    "modalities": "text only",
    "audio": "text only",
    "prediction": "no predicted outputs",
    "reasoning_effort": "the policy is not a reasoning model",
    "verbosity": "the policy has no verbosity control",
    "web_search_options": "no web search",
    "echo": "the prompt is not echoed back",
    "suffix": "no insertion (suffix) mode",
    "best_of": "use n and send feedback on the best one instead",
}
CHAT_FIELDS = (
    *_SAMPLING_FIELDS,
    *_IGNORED_FIELDS,
    *_CHAT_NEUTRAL,
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "metadata",
)
TEXT_FIELDS = (*_SAMPLING_FIELDS, *_IGNORED_FIELDS, *_TEXT_NEUTRAL, "prompt", "max_tokens", "metadata")
_MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id", "refusal", "function_call", "audio")


@dataclass(frozen=True)
class GenerationCall:
    """One parsed request: what to send to the policy and how to answer."""

    kind: str  # "chat" or "text"
    request: policy_pb2.GenerateRequest
    stream: bool
    include_usage: bool
    params: ParamMap = field(default_factory=tuple)  # gRPC field → body param, for the policy's INVALID_ARGUMENTs


def check_model(body: f.Body, model_id: str) -> None:
    """``model`` must be the served model id: 400 when missing, 404 model_not_found otherwise."""
    model = f.get_str(body, "model", required=True)
    if model != model_id:
        raise model_not_found(model or "", model_id)


def parse_chat(body: f.Body, model_id: str) -> GenerationCall:
    """A /v1/chat/completions body → the policy call; raises ApiError (400/404)."""
    f.reject_unknown(body, CHAT_FIELDS)
    check_model(body, model_id)
    f.require_neutral(body, _CHAT_NEUTRAL, _WHY)
    if body.get("messages") is None:
        raise missing("messages")
    request = policy_pb2.GenerateRequest(messages=_messages(body["messages"]))
    max_tokens_param = _max_tokens_param(body)
    _fill_common(request, body, max_tokens_param)
    return _call("chat", request, body, max_tokens_param)


def parse_text(body: f.Body, model_id: str) -> GenerationCall:
    """A /v1/completions body → the policy call; raises ApiError (400/404)."""
    f.reject_unknown(body, TEXT_FIELDS)
    check_model(body, model_id)
    f.require_neutral(body, _TEXT_NEUTRAL, _WHY)
    request = policy_pb2.GenerateRequest(prompt=_prompt(body.get("prompt")))
    _fill_common(request, body, "max_tokens")
    return _call("text", request, body, "max_tokens")


def _call(kind: str, request: policy_pb2.GenerateRequest, body: f.Body, max_tokens_param: str) -> GenerationCall:
    stream = bool(f.get_bool(body, "stream"))
    options = f.get_object(body, "stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("stream_options", "is only allowed when stream is true")
        f.reject_unknown(options, ("include_usage", "include_obfuscation"), prefix="stream_options.")
        include_usage = bool(f.get_bool(options, "include_usage"))
        f.get_bool(options, "include_obfuscation")  # type-checked; there is nothing to obfuscate against here
    params: ParamMap = (
        ("sampling.max_new_tokens", max_tokens_param),
        ("sampling.temperature", "temperature"),
        ("sampling.top_p", "top_p"),
        ("sampling.top_k", "top_k"),
        ("sampling.num_return_sequences", "n"),
        ("sampling.stop", "stop"),
        ("sampling.seed", "seed"),
        ("messages", "messages"),
        ("prompt", "prompt"),
        ("user_id", "user"),
        ("metadata", "metadata"),
    )
    return GenerationCall(kind, request, stream, include_usage, params)


def _max_tokens_param(body: f.Body) -> str:
    """Which of max_tokens / max_completion_tokens the client used (errors name that one)."""
    old, new = body.get("max_tokens"), body.get("max_completion_tokens")
    if old is not None and new is not None and old != new:
        raise invalid("max_completion_tokens", f"differs from max_tokens ({old}); send one of them")
    return "max_completion_tokens" if new is not None else "max_tokens"


def _fill_common(request: policy_pb2.GenerateRequest, body: f.Body, max_tokens_param: str) -> None:
    """Sampling, user and metadata: the fields chat and text completions share."""
    sampling = request.sampling
    max_tokens = f.get_int(body, max_tokens_param, low=1)
    if max_tokens is not None:
        sampling.max_new_tokens = min(max_tokens, 2**31 - 1)  # the policy's cap refuses anything that large
    temperature = f.get_number(body, "temperature", low=0.0, high=2.0)
    if temperature is not None:
        sampling.temperature = temperature
    top_p = f.get_number(body, "top_p", low=0.0, high=1.0)
    if top_p is not None:
        sampling.top_p = top_p
    top_k = f.get_int(body, "top_k", low=0, high=2**31 - 1)
    if top_k is not None:
        sampling.top_k = top_k
    n = f.get_int(body, "n", low=1, high=128)
    if n is not None:
        sampling.num_return_sequences = n
    sampling.stop.extend(f.get_str_list(body, "stop"))
    seed = f.get_int(body, "seed")
    if seed is not None:
        sampling.seed = seed
    user = f.get_str(body, "user", max_chars=MAX_USER_CHARS)
    if user is None:
        user = f.get_str(body, "safety_identifier", max_chars=MAX_USER_CHARS)
    request.user_id = user or ""
    request.metadata.update(f.get_str_map(body, "metadata", **METADATA_LIMITS))


def _prompt(value: Any) -> str:
    """``prompt``: one string (or a list holding exactly one); token arrays and batches are refused."""
    if value is None:
        raise missing("prompt")
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], str):
            return value[0]
        if value and all(isinstance(v, str) for v in value):
            raise unsupported("prompt", "one prompt per request (send several requests, or n for several answers)")
        raise unsupported("prompt", "token arrays; send the prompt as text")
    if not isinstance(value, str):
        raise invalid("prompt", "must be a string", code="invalid_type")
    return value


def _messages(value: Any) -> list[common_pb2.ChatMessage]:
    if not isinstance(value, list) or not value:
        raise invalid("messages", "must be a non-empty array of {role, content} objects")
    return [_message(item, i) for i, item in enumerate(value)]


def _message(item: Any, i: int) -> common_pb2.ChatMessage:
    where = f"messages[{i}]"
    if not isinstance(item, dict):
        raise invalid(where, "must be an object with role and content")
    f.reject_unknown(item, _MESSAGE_FIELDS, prefix=where + ".")
    for name, why in (("tool_calls", "no tool calling"), ("function_call", "no function calling"), ("audio", "text")):
        if item.get(name):
            raise unsupported(f"{where}.{name}", why)
    role = item.get("role")
    if role is None:
        raise missing(f"{where}.role")
    if role not in CHAT_ROLES:
        raise invalid(f"{where}.role", f"is {role!r}; expected one of {', '.join(CHAT_ROLES)}")
    return common_pb2.ChatMessage(role=CHAT_ROLES[role], content=_content(item.get("content"), where))


def _content(value: Any, where: str) -> str:
    """A message's text: a string, or an array of text parts joined (other part types are refused)."""
    if isinstance(value, str):
        return value
    if value is None:
        raise missing(f"{where}.content")
    if not isinstance(value, list):
        raise invalid(f"{where}.content", "must be a string or an array of text parts", code="invalid_type")
    texts = []
    for j, part in enumerate(value):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else None
            why = f"only text parts ({{'type': 'text', 'text': ...}}), got {kind!r}"
            raise unsupported(f"{where}.content[{j}]", why)
        texts.append(part["text"])
    return "".join(texts)
