"""Bearer tokens with roles: who may call which RPC.

Two roles. An *application* may call what serving and feedback need (Generate,
Score, SubmitFeedback) and the read-only calls (GetModelInfo, GetStatus); an
*operator* may call everything, including the trainer's controls (Promote,
Rollback, Pause, Resume). An RPC not listed in :data:`APPLICATION_METHODS` is
operator-only, so a new RPC is closed until someone opens it here.

Tokens come from ``--auth-token`` (application), ``--operator-token``
(operator) and ``--tokens-file``: JSON mapping the sha256 (hex) of each token
to its role and an optional subject, the user or app the token speaks for::

    {"3f2a...": {"role": "application", "subject": "app-42"},
     "9b1c...": {"role": "operator", "subject": "alice"}}

Only digests are kept in memory. A presented token is hashed once and compared
with :func:`hmac.compare_digest` against every configured digest, with no early
exit, so neither timing nor role reveals which token almost matched. Tokens
are never logged: log lines name the role and subject only.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.service_config import ServiceConfig

BEARER_PREFIX = "Bearer "

# Every call an application token may make; anything else needs an operator.
APPLICATION_METHODS = frozenset(
    {
        "/rlhf.v1.PolicyService/Generate",
        "/rlhf.v1.PolicyService/GenerateStream",
        "/rlhf.v1.PolicyService/GetModelInfo",
        "/rlhf.v1.RewardService/Score",
        "/rlhf.v1.RewardService/ScoreBatch",
        "/rlhf.v1.RewardService/GetModelInfo",
        "/rlhf.v1.FeedbackService/SubmitFeedback",
        "/rlhf.v1.FeedbackService/SubmitFeedbackBatch",
        "/rlhf.v1.TrainerService/GetStatus",
    }
)


class Role(enum.Enum):
    APPLICATION = "application"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's role and, if the token names one, its subject."""

    role: Role
    subject: str = ""

    def may_call(self, method: str) -> bool:
        return self.role is Role.OPERATOR or method in APPLICATION_METHODS


# The caller of the RPC being served (set by shared.grpc.server's AuthInterceptor).
principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def current_principal() -> Principal | None:
    """The authenticated caller of the RPC being served; None when auth is off."""
    return principal_var.get()


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenFileError(ValueError):
    """The tokens file cannot be used; the message names the entry and what to fix."""


def read_tokens_file(path: str | Path) -> list[tuple[bytes, Principal]]:
    """(sha256 digest, principal) for every entry of a tokens file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise TokenFileError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TokenFileError(f"{path}: must be a JSON object mapping sha256 hex digests to {{role, subject}}")
    return [_parse_entry(path, key, value) for key, value in data.items()]


def _parse_entry(path: str | Path, key: str, value: Any) -> tuple[bytes, Principal]:
    where = f"{path}: entry {key[:12]!r}"
    try:
        digest = bytes.fromhex(key)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise TokenFileError(f"{where}: the key must be the sha256 of the token, 64 hex digits (sha256sum)")
    if not isinstance(value, Mapping):
        raise TokenFileError(f'{where}: the value must be an object like {{"role": "application"}}')
    unknown = set(value) - {"role", "subject"}
    if unknown:
        raise TokenFileError(f"{where}: unknown fields {sorted(unknown)}; allowed: role, subject")
    roles = [r.value for r in Role]
    if value.get("role") not in roles:
        raise TokenFileError(f"{where}: role must be one of {roles}, got {value.get('role')!r}")
    subject = value.get("subject", "")
    if not isinstance(subject, str):
        raise TokenFileError(f"{where}: subject must be a string")
    return digest, Principal(Role(value["role"]), subject)


class TokenRegistry:
    """The configured tokens (as digests) and the principal each stands for."""

    def __init__(self, entries: Iterable[tuple[bytes, Principal]]):
        self._entries = list(entries)

    @classmethod
    def from_config(cls, config: ServiceConfig) -> TokenRegistry:
        entries: list[tuple[bytes, Principal]] = []
        if config.auth_token:
            entries.append((token_digest(config.auth_token), Principal(Role.APPLICATION)))
        if config.operator_token:
            entries.append((token_digest(config.operator_token), Principal(Role.OPERATOR)))
        if config.tokens_file:
            entries.extend(read_tokens_file(config.tokens_file))
        return cls(entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def has_operator(self) -> bool:
        return any(p.role is Role.OPERATOR for _, p in self._entries)

    def authenticate(self, authorization: str) -> Principal | None:
        """The principal of an ``authorization`` header value, or None for a missing or unknown token."""
        token = authorization[len(BEARER_PREFIX) :] if authorization.startswith(BEARER_PREFIX) else ""
        presented = token_digest(token)
        found: Principal | None = None
        for digest, principal in self._entries:
            # No break: every digest is compared whatever matched before.
            if hmac.compare_digest(digest, presented) and token:
                found = principal
        return found
