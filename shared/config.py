"""Service configuration: a frozen dataclass built once from flags and env.

Every field is declared with :func:`setting` (a default, help text and the
environment variable from :mod:`shared.env`). :func:`load_config` turns the
dataclass into an argparse parser, so ``python -m services.X --help`` lists
every setting with its variable, and precedence is flag > env > default.
Validation lives in each config's ``__post_init__`` and raises ConfigError
with a message that names the setting and what to change.

A renamed setting keeps its old flag and variable for one release: the config
class lists it once in ``renamed`` (:class:`Renamed`, old name -> new name),
and :func:`load_config` accepts the old spelling with a logged deprecation
warning (the new one wins when both are given).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

C = TypeVar("C")
log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting has a value the service cannot run with."""


def setting(default: Any, help: str, *, env: str | None = None, choices: Sequence[Any] | None = None) -> Any:
    """Declare a config field: its default, help text and environment variable."""
    return dataclasses.field(default=default, metadata={"help": help, "env": env, "choices": choices})


def nested(cls: type, *, env_prefix: str, exclude: Sequence[str] = ()) -> Any:
    """Compose another settings dataclass as one field (e.g. TrainerConfig.ppo:
    PPOConfig). Its fields become flags ``--<field>-<name>`` and variables
    ``<env_prefix><NAME>``, with the nested class's own defaults and help: each
    setting is declared once, where it belongs. ``exclude`` names fields the
    outer config sets itself (they keep their default here)."""
    return dataclasses.field(
        default_factory=cls, metadata={"nested": cls, "env_prefix": env_prefix, "exclude": tuple(exclude)}
    )


@dataclass(frozen=True)
class Renamed:
    """A setting renamed in this release: its old flag and variable still work, with a warning.

    Declared once, in the config class's ``renamed: ClassVar[tuple[Renamed, ...]]``. The old
    flag is ``--<old>`` under the same prefix as the new one (``--ppo-ppo-epochs`` for
    TrainerConfig.ppo's ``ppo_epochs``); the old variable is ``env`` when the setting has a
    variable of its own (shared.env), else derived from the nested config's prefix."""

    old: str
    new: str
    env: str | None = None


def renamed_settings(cls: type) -> tuple[Renamed, ...]:
    """The renames ``cls`` (and its bases) declare."""
    return tuple(getattr(cls, "renamed", ()))


def upgrade_renamed(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (field name -> value, e.g. a saved config) with old names moved to their
    new ones, for reading what an older release wrote."""
    out = dict(values)
    for rename in renamed_settings(cls):
        if rename.old in out:
            old = out.pop(rename.old)
            out.setdefault(rename.new, old)
    return out


def check(condition: bool, name: str, message: str) -> None:
    """Raise ConfigError naming the flag and its variable unless ``condition``."""
    if not condition:
        raise ConfigError(f"--{name.replace('_', '-')}: {message}")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _converter(tp: Any):
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    raise TypeError(f"unsupported config field type {tp!r}")


def _flag_fields(cls: type, prefix: str = "", env_prefix: str | None = None, exclude: Sequence[str] = ()):
    """(dest, field, type, env var) for every flag of ``cls``, nested configs flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        inner = f.metadata.get("nested")
        if inner is not None:
            yield from _flag_fields(inner, f"{prefix}{f.name}_", f.metadata["env_prefix"], f.metadata["exclude"])
            continue
        var = f.metadata.get("env") or (f"{env_prefix}{f.name.upper()}" if env_prefix else None)
        yield prefix + f.name, f, hints[f.name], var


def _renamed_flags(cls: type, prefix: str = "", env_prefix: str | None = None):
    """(old dest, new dest, old env var) of every renamed setting of ``cls``, nested configs included."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for rename in renamed_settings(cls):
        new = fields[rename.new]
        var = rename.env or (
            f"{env_prefix}{rename.old.upper()}" if env_prefix and not new.metadata.get("env") else None
        )
        yield prefix + rename.old, prefix + rename.new, var
    for f in fields.values():
        inner = f.metadata.get("nested")
        if inner is not None:
            yield from _renamed_flags(inner, f"{prefix}{f.name}_", f.metadata["env_prefix"])


def _deprecated_dest(old_dest: str) -> str:
    return f"deprecated__{old_dest}"


def _build(cls: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """``cls`` from flat ``values`` (dest -> value); a nested config's refusal names the outer flag."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        inner = f.metadata.get("nested")
        if inner is not None:
            sub = f"{prefix}{f.name}_"
            try:
                kwargs[f.name] = _build(inner, {k: v for k, v in values.items() if k.startswith(sub)}, sub)
            except ConfigError as exc:
                flag, _, message = str(exc).partition(": ")
                raise ConfigError(f"--{sub.replace('_', '-')}{flag.removeprefix('--')}: {message}") from None
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
    return cls(**kwargs)


def config_parser(
    cls: type, prog: str | None = None
) -> tuple[argparse.ArgumentParser, list[tuple[str, Any, Any, str | None]]]:
    """The argparse parser of ``cls``'s flags (what ``--help`` prints) and the (dest, field,
    type, env var) of each flag."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None,
    )
    flags = list(_flag_fields(cls))
    for dest, f, tp, var in flags:
        meta = f.metadata
        # The parser's own default stays None so "not given" can fall back to
        # the environment; the help shows the field's real default instead.
        help_text = meta.get("help", "") + f" (default: {f.default!r})"
        if var:
            help_text += f" [env {var}]"
        # argparse %-formats help texts: a literal % ("95%") must reach it as %%.
        help_text = help_text.replace("%", "%%")
        flag = "--" + dest.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, dest=dest, type=_parse_bool, nargs="?", const=True, default=None, help=help_text)
        else:
            parser.add_argument(
                flag, dest=dest, type=_converter(tp), default=None, choices=meta.get("choices"), help=help_text
            )
    types = {dest: (f, tp) for dest, f, tp, _ in flags}
    for old, new, _ in _renamed_flags(cls):
        if new not in types:
            continue  # the new setting is set by the outer config (nested exclude): so is the old
        f, tp = types[new]
        flag, kind = "--" + old.replace("_", "-"), _parse_bool if tp is bool else _converter(tp)
        extra: dict[str, Any] = {"nargs": "?", "const": True} if tp is bool else {"choices": f.metadata.get("choices")}
        # Hidden from --help: the new flag is the one to learn.
        parser.add_argument(flag, dest=_deprecated_dest(old), type=kind, default=None, help=argparse.SUPPRESS, **extra)
    return parser, flags


def load_config(cls: type[C], argv: Sequence[str] | None = None, *, prog: str | None = None) -> C:
    """Build ``cls`` from command-line flags, then RLHF_* env, then defaults."""
    parser, flags = config_parser(cls, prog)
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for dest, _, tp, var in flags:
        from_flag = getattr(args, dest)
        if from_flag is not None:
            values[dest] = from_flag
        elif var and var in os.environ:
            try:
                values[dest] = _converter(tp)(os.environ[var])
            except ValueError as exc:
                raise ConfigError(f"{var}={os.environ[var]!r}: {exc}") from exc
    types = {dest: (tp, var) for dest, _, tp, var in flags}
    for old, new, old_var in _renamed_flags(cls):
        if new not in types:
            continue  # set by the outer config (a nested exclude)
        _apply_renamed(values, args, old, new, old_var, *types[new])
    config: C = _build(cls, values)
    return config


def _apply_renamed(
    values: dict[str, Any], args: argparse.Namespace, old: str, new: str, var: str | None, tp: Any, new_var: str | None
) -> None:
    """Take a renamed setting's value from its old flag or variable (with a warning) unless the new one is set."""
    new_flag, old_flag = "--" + new.replace("_", "-"), "--" + old.replace("_", "-")
    sources: list[tuple[str, str, Any]] = []  # (old spelling, its replacement, value)
    from_flag = getattr(args, _deprecated_dest(old), None)
    if from_flag is not None:
        sources.append((old_flag, new_flag, from_flag))
    if var and var in os.environ:
        try:
            sources.append((var, new_var or new_flag, _converter(tp)(os.environ[var])))
        except ValueError as exc:
            raise ConfigError(f"{var}={os.environ[var]!r}: {exc}") from exc
    if not sources:
        return
    used, replacement, value = sources[0]
    if new in values:
        log.warning(
            f"{used} is deprecated and ignored: {replacement} is set",
            extra={"deprecated": used, "replacement": replacement},
        )
        return
    values[new] = value
    log.warning(
        f"{used} is deprecated (renamed {replacement}); it is still read in this release",
        extra={"deprecated": used, "replacement": replacement},
    )


def config_summary(config: Any) -> dict[str, Any]:
    """Fields for the start-up log line, with secrets masked."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("nested") is not None:
            out.update({f"{f.name}_{k}": v for k, v in config_summary(value).items()})
            continue
        if "token" in f.name or "password" in f.name or "secret" in f.name:
            value = "***" if value else ""
        out[f.name] = value
    return out


def log_config(config: Any, logger: logging.Logger) -> None:
    logger.info("config", extra={"fields": config_summary(config)})
