"""Policy replies → OpenAI response objects, stream chunks and SSE frames.

Ids: every completion's id is the policy's generation id, the id
``/v1/feedback`` takes. A response's ``id`` is the generation id of its first
choice and each choice also carries its own ``generation_id`` (so with ``n=2``
both answers can be named in a preference); a stream chunk's ``id`` is the
generation id of the choice it carries. ``model`` is the served model id the
client sent; ``system_fingerprint`` is the policy version that produced the
text (e.g. "v3"), which changes when a new version is promoted. No grpc here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from shared.proto.rlhf.v1 import common_pb2, events_pb2, policy_pb2

FINISH_REASONS: dict[int, str] = {
    events_pb2.FINISH_REASON_EOS: "stop",
    events_pb2.FINISH_REASON_STOP_SEQUENCE: "stop",
    events_pb2.FINISH_REASON_LENGTH: "length",
}
SSE_DONE = b"data: [DONE]\n\n"
OWNED_BY = "rlhf-loop"


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line (JSON escapes newlines, so one line)."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: Iterable[int]) -> dict[str, int]:
    completion = sum(completion_tokens)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def _finish(reason: int) -> str | None:
    return FINISH_REASONS.get(reason)


def completion_body(kind: str, reply: policy_pb2.GenerateResponse, model_id: str, created: int) -> dict[str, Any]:
    """The whole answer of a non-streamed chat (``kind="chat"``) or text completion."""
    completions = sorted(reply.completions, key=lambda c: c.index)
    choices = [_chat_choice(c) if kind == "chat" else _text_choice(c) for c in completions]
    return {
        "id": completions[0].generation_id if completions else reply.request_id,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": created,
        "model": model_id,
        "system_fingerprint": reply.model_version,
        "choices": choices,
        "usage": usage(reply.prompt_tokens, (c.completion_tokens for c in completions)),
    }


def _chat_choice(c: policy_pb2.Completion) -> dict[str, Any]:
    return {
        "index": c.index,
        "message": {"role": "assistant", "content": c.text, "refusal": None, "annotations": []},
        "logprobs": None,
        "finish_reason": _finish(c.finish_reason),
        "generation_id": c.generation_id,
    }


def _text_choice(c: policy_pb2.Completion) -> dict[str, Any]:
    return {
        "index": c.index,
        "text": c.text,
        "logprobs": None,
        "finish_reason": _finish(c.finish_reason),
        "generation_id": c.generation_id,
    }


class ChunkRenderer:
    """Turns the policy's stream into OpenAI chunks, remembering per choice
    whether its role was sent and its token count for the usage chunk."""

    def __init__(self, kind: str, model_id: str, created: int, include_usage: bool):
        self.kind = kind
        self.model_id = model_id
        self.created = created
        self.include_usage = include_usage
        self.prompt_tokens = 0
        self.version = ""
        self.first_id = ""
        self._tokens: dict[int, int] = {}

    def chunk(self, piece: policy_pb2.GenerateStreamResponse) -> dict[str, Any]:
        """The chunk for one policy stream message."""
        self.version = piece.model_version
        self.prompt_tokens = piece.prompt_tokens
        self.first_id = self.first_id or piece.generation_id
        first_of_choice = piece.index not in self._tokens
        self._tokens[piece.index] = piece.completion_tokens
        finish = _finish(piece.finish_reason)
        if self.kind == "chat":
            delta: dict[str, Any] = {"content": piece.text_delta}
            if first_of_choice:
                delta = {"role": "assistant", **delta}
            choice: dict[str, Any] = {"index": piece.index, "delta": delta}
        else:
            choice = {"index": piece.index, "text": piece.text_delta}
        choice.update(logprobs=None, finish_reason=finish, generation_id=piece.generation_id)
        body = self._envelope(piece.generation_id, [choice])
        if self.include_usage:
            body["usage"] = None  # as OpenAI does: only the last chunk carries usage
        return body

    def usage_chunk(self) -> dict[str, Any]:
        """The last chunk when stream_options.include_usage is set: no choices, the usage of all of them."""
        body = self._envelope(self.first_id, [])
        body["usage"] = usage(self.prompt_tokens, self._tokens.values())
        return body

    def _envelope(self, chunk_id: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": chunk_id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model_id,
            "system_fingerprint": self.version,
            "choices": choices,
        }


def models_body(info: common_pb2.ModelInfo, model_id: str) -> dict[str, Any]:
    """GET /v1/models: the one model this front door serves."""
    return {"object": "list", "data": [model_body(info, model_id)]}


def model_body(info: common_pb2.ModelInfo, model_id: str) -> dict[str, Any]:
    """One model object; beyond OpenAI's fields, what an app may want to know about the policy."""
    return {
        "id": model_id,
        "object": "model",
        "created": info.created_at.seconds if info.HasField("created_at") else 0,
        "owned_by": OWNED_BY,
        "version": info.version,
        "parent_version": info.parent_version,
        "architecture": info.architecture,
        "context_window": info.context_window,
        "has_chat_template": info.has_chat_template,
        "max_tokens_cap": info.limits.get("max_new_tokens", 0),
        "max_n": info.limits.get("num_return_sequences", 0),
    }
