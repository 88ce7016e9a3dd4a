"""Versioned, immutable model directories: ``<root>/<kind>/<version>/``.

Each version holds its weights (safetensors only), config, tokenizer and a
``manifest.json`` with the version, its parent, created_at, eval metrics and
the sha256 of every file. A version is assembled in a hidden temporary
directory and renamed into place, so a reader never sees half a model; a
directory without a manifest, or whose files do not match it, is refused.

``<root>/<kind>/CURRENT`` names the version replicas should serve. It is
replaced atomically on promotion and rollback, so a replica that (re)starts
loads what the last ModelUpdateEvent announced. ``<root>/<kind>/CANARY``
(JSON: version, stable version, share, started_at), present only while a
canary rollout runs, names a candidate that serves a share of the users
beside CURRENT; it too is replaced atomically, and removed when the canary
completes (CURRENT moves to it) or is rolled back.

``<root>/<kind>/HISTORY.jsonl`` is the append-only record of every move of
CURRENT (who or what moved it, when, why, the update event's id): a manifest
says what made a version, the history when and by whom it was served.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

KINDS = ("policy", "reward")
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
CANARY = "CANARY"
HISTORY = "HISTORY.jsonl"
# Formats that unpickle on load: refused so loading a model never runs code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# ASCII digits to the very end: "v1\n" and "v\u0663" are not versions (\d and $ would let them be).
_VERSION_RE = re.compile(r"^v([0-9]+)\Z")


class ModelStoreError(Exception):
    """A version is missing, half-written, corrupt or not allowed."""


@dataclass(frozen=True)
class Manifest:
    kind: str
    version: str
    parent_version: str
    created_at: float
    files: dict[str, str]
    eval_metrics: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    # A LoRA adapter version names the full-weights version it applies to (shared.models.adapters);
    # empty for full weights.
    base_version: str = ""

    @property
    def is_adapter(self) -> bool:
        return bool(self.base_version)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(
            kind=data["kind"],
            version=data["version"],
            parent_version=data.get("parent_version", ""),
            created_at=float(data["created_at"]),
            files=dict(data["files"]),
            eval_metrics={k: float(v) for k, v in data.get("eval_metrics", {}).items()},
            notes=dict(data.get("notes", {})),
            base_version=str(data.get("base_version", "")),
        )


@dataclass(frozen=True)
class CanaryPointer:
    """A canary rollout: ``version`` serves ``share`` of the users, CURRENT the rest."""

    version: str
    stable_version: str
    share: float
    started_at: float


def version_number(version: str) -> int:
    match = _VERSION_RE.match(version)
    if not match:
        raise ModelStoreError(f"bad version name {version!r}: expected v<N>, e.g. v3")
    return int(match.group(1))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ModelStoreError(f"unknown model kind {kind!r}; expected one of {KINDS}")


def _inside(vdir: Path, rel: str) -> Path:
    """``vdir / rel`` for a manifest's file name, refusing one that leaves the version directory.

    A manifest is data on a shared volume: an absolute name, a ``..`` or a link
    pointing out of the version must never make a reader hash or load a file
    elsewhere (another version's, or the host's)."""
    name = Path(rel)
    if not rel or name.is_absolute() or ".." in name.parts or "\\" in rel:
        raise ModelStoreError(f"manifest names {rel!r}: a file name must be relative and inside its version")
    path = vdir / name
    if not path.resolve().is_relative_to(vdir.resolve()):
        raise ModelStoreError(f"manifest names {rel!r}, which resolves outside its version directory")
    return path


class ModelStore:
    """The model store rooted at a local directory (a PersistentVolume on k8s)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def kind_dir(self, kind: str) -> Path:
        _check_kind(kind)
        return self.root / kind

    def version_dir(self, kind: str, version: str) -> Path:
        """``<root>/<kind>/<version>``, for a well-formed version name only (v<N>): a name
        from a caller, a pointer file or an event never reaches outside the kind's directory."""
        version_number(version)
        return self.kind_dir(kind) / version

    def versions(self, kind: str) -> list[str]:
        """Complete versions of ``kind``, oldest first."""
        kdir = self.kind_dir(kind)
        if not kdir.is_dir():
            return []
        found = [p.name for p in kdir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
        return sorted(found, key=version_number)

    def latest(self, kind: str) -> str | None:
        versions = self.versions(kind)
        return versions[-1] if versions else None

    def write_version(
        self,
        kind: str,
        fill: Callable[[Path], None],
        *,
        parent_version: str = "",
        eval_metrics: dict[str, float] | None = None,
        notes: dict[str, str] | None = None,
        base_version: str = "",
    ) -> Manifest:
        """Create the next version: ``fill(tmp_dir)`` writes the files, then the
        manifest is written and the directory renamed into place atomically.

        ``base_version`` makes it an adapter on that version, which must be a
        complete full-weights version of the same kind (adapters do not stack)."""
        if base_version:
            base = self.manifest(kind, base_version)
            if base.is_adapter:
                raise ModelStoreError(
                    f"{kind} {base_version} is itself an adapter on {base.base_version}: "
                    "an adapter applies to a full-weights version"
                )
        kdir = self.kind_dir(kind)
        kdir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=kdir))
        try:
            fill(tmp)
            files = {}
            for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
                rel = path.relative_to(tmp).as_posix()
                if path.suffix in PICKLE_SUFFIXES:
                    raise ModelStoreError(
                        f"{rel}: pickle-based weights are not allowed in the model store; "
                        "save with safetensors (save_pretrained(..., safe_serialization=True))"
                    )
                files[rel] = sha256_file(path)
            if not files:
                raise ModelStoreError("refusing to store an empty model directory")
            while True:
                latest = self.latest(kind)
                version = f"v{version_number(latest) + 1 if latest else 1}"
                manifest = Manifest(
                    kind=kind,
                    version=version,
                    parent_version=parent_version,
                    created_at=time.time(),
                    files=files,
                    eval_metrics=dict(eval_metrics or {}),
                    notes=dict(notes or {}),
                    base_version=base_version,
                )
                (tmp / MANIFEST).write_text(manifest.to_json())
                _fsync_dir(tmp)
                try:
                    os.rename(tmp, kdir / version)  # fails if another writer took it
                except OSError:
                    continue
                _fsync_dir(kdir)
                return manifest
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def manifest(self, kind: str, version: str) -> Manifest:
        path = self.version_dir(kind, version) / MANIFEST
        if not path.parent.is_dir():
            raise ModelStoreError(
                f"{kind} {version} is not in the model store at {self.root} "
                f"(available: {', '.join(self.versions(kind)) or 'none'})"
            )
        if not path.is_file():
            raise ModelStoreError(
                f"{kind} {version} at {path.parent} has no {MANIFEST}: it is half-written "
                "or was not created by the model store; refusing to load it"
            )
        try:
            manifest = Manifest.from_json(path.read_text())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelStoreError(f"{path} is not a valid manifest: {exc}") from exc
        if manifest.base_version:
            version_number(manifest.base_version)  # a name from a file on a shared volume
        if (manifest.kind, manifest.version) != (kind, version):
            raise ModelStoreError(
                f"{path} says it is {manifest.kind} {manifest.version}, not {kind} {version}: refusing it"
            )
        for rel in manifest.files:
            _inside(path.parent, rel)
        return manifest

    def open_version(self, kind: str, version: str, *, verify: bool = True) -> Path:
        """Return the directory of a complete version, checking every sha256."""
        manifest = self.manifest(kind, version)
        vdir = self.version_dir(kind, version)
        if verify:
            for rel, expected in manifest.files.items():
                path = _inside(vdir, rel)
                if not path.is_file():
                    raise ModelStoreError(f"{kind} {version} is corrupt: {rel} is missing")
                if sha256_file(path) != expected:
                    raise ModelStoreError(f"{kind} {version} is corrupt: sha256 of {rel} does not match its manifest")
            extra = (
                {p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()}
                - set(manifest.files)
                - {MANIFEST}
            )
            pickled = [p for p in extra if Path(p).suffix in PICKLE_SUFFIXES]
            if pickled:
                raise ModelStoreError(f"{kind} {version} contains pickle files {pickled}; refusing")
        return vdir

    def manifest_sha256(self, kind: str, version: str) -> str:
        return sha256_file(self.version_dir(kind, version) / MANIFEST)

    def current(self, kind: str) -> str | None:
        """The version replicas should serve: CURRENT, else the latest version."""
        pointer = self.kind_dir(kind) / CURRENT
        if pointer.is_file():
            version = pointer.read_text().strip()
            if version:
                try:
                    version_number(version)
                except ModelStoreError as exc:
                    raise ModelStoreError(
                        f"{pointer} names {version!r}, not a version (v<N>): fix or remove it"
                    ) from exc
                return version
        return self.latest(kind)

    def version_to_serve(self, kind: str, announced: str, announced_sha256: str) -> tuple[str, str]:
        """(version, manifest sha256) a replica should serve after a ModelUpdateEvent
        announcing ``announced``: CURRENT when it names another version.

        CURRENT moves before the event is published, so it is never older than
        any event. An event naming something else is stale: delivered late or
        out of order (a producer abandoned during a broker outage can still
        deliver when the broker returns), and must not move a replica back."""
        current = self.current(kind)
        if current is None or current == announced:
            return announced, announced_sha256
        return current, self.manifest_sha256(kind, current)

    def set_current(self, kind: str, version: str) -> None:
        self.manifest(kind, version)  # refuse to point at something incomplete
        kdir = self.kind_dir(kind)
        fd, tmp = tempfile.mkstemp(prefix=".current-", dir=kdir)
        with os.fdopen(fd, "w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, kdir / CURRENT)

    # --- canary rollouts ---------------------------------------------------------------
    def canary(self, kind: str) -> CanaryPointer | None:
        """The canary rollout of ``kind`` in progress, or None."""
        path = self.kind_dir(kind) / CANARY
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ModelStoreError(f"{path} is not valid JSON ({exc}); remove it to end the canary") from exc
        try:
            return CanaryPointer(
                str(data["version"]), str(data["stable_version"]), float(data["share"]), float(data["started_at"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelStoreError(f"{path} lacks a field ({exc}); remove it to end the canary") from exc

    def set_canary(self, kind: str, version: str, share: float, stable_version: str) -> CanaryPointer:
        """Start (or re-point) a canary: ``version`` serves ``share`` of the users. Atomic, like CURRENT."""
        if not 0.0 < share < 1.0:
            raise ModelStoreError(f"canary share must be between 0 and 1 (exclusive), got {share}")
        self.manifest(kind, version)  # refuse to point at something incomplete
        pointer = CanaryPointer(version, stable_version, float(share), time.time())
        kdir = self.kind_dir(kind)
        fd, tmp = tempfile.mkstemp(prefix=".canary-", dir=kdir)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(pointer), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, kdir / CANARY)
        return pointer

    def clear_canary(self, kind: str) -> None:
        """End the canary (a no-op when none runs)."""
        (self.kind_dir(kind) / CANARY).unlink(missing_ok=True)

    def append_history(self, kind: str, entry: dict) -> None:
        """Append one JSON line to the kind's history (durably: fsync before return)."""
        kdir = self.kind_dir(kind)
        kdir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(entry, sort_keys=True) + "\n"
        with open(kdir / HISTORY, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def history(self, kind: str, version: str | None = None) -> list[dict]:
        """History entries, oldest first (those naming ``version`` as the new or the
        previous version, when given). A torn last line (a crash mid-append) is skipped."""
        path = self.kind_dir(kind) / HISTORY
        if not path.is_file():
            return []
        entries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and version in (None, entry.get("version"), entry.get("previous_version")):
                entries.append(entry)
        return entries


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
