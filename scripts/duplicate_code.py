"""The duplicate-code check `make lint` runs: pylint's similarity checker over hand-written code.

    python -m scripts.duplicate_code            # exit 1 on a pair of places that is not allowed
    python -m scripts.duplicate_code --all      # list every pair, allowed ones too

It reads the Python files git tracks under the platform, the CLI, the demo and
the benchmarks (tests and the generated stubs in shared/proto are left out, as
ruff leaves the stubs out) and reports every run of MIN_LINES or more similar
lines shared by two places, comments, docstrings, imports and signatures not
counted. A pair that is meant to stay is named in ALLOWED_FILE with its reason;
a pair is named by its two files, so a line drift does not break the entry.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("shared", "services", "rlhf_cli", "demo", "benchmarks")
SKIPPED = ("shared/proto/",)
MIN_LINES = 6
ALLOWED_FILE = Path(__file__).with_name("duplicate_code_allowed.txt")

_HEADER = re.compile(r"^(\d+) similar lines in (\d+) files$")
_PLACE = re.compile(r"^==(?P<path>[^:]+):\[(?P<start>\d+):(?P<end>\d+)\]$")


@dataclass(frozen=True)
class Duplicate:
    lines: int
    places: tuple[str, ...]  # "path:[start:end]", in the checker's order

    @property
    def files(self) -> frozenset[str]:
        return frozenset(place.split(":", 1)[0] for place in self.places)


def checked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *(f"{d}/*.py" for d in CHECKED)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return sorted(p for p in out if not p.startswith(SKIPPED) and (ROOT / p).is_file())


def find_duplicates(files: list[str], min_lines: int = MIN_LINES) -> list[Duplicate]:
    """Every similar run pylint's checker finds among ``files`` (paths relative to the repo root)."""
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "pylint.checkers.symilar",
            "--duplicates",
            str(min_lines),
            "--ignore-comments",
            "--ignore-docstrings",
            "--ignore-imports",
            "--ignore-signatures",
            *files,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return parse_report(report)


def parse_report(report: str) -> list[Duplicate]:
    duplicates: list[Duplicate] = []
    lines = report.splitlines()
    for i, line in enumerate(lines):
        header = _HEADER.match(line.strip())
        if header is None:
            continue
        places = []
        for follow in lines[i + 1 : i + 1 + int(header.group(2))]:
            place = _PLACE.match(follow.strip())
            if place:
                places.append(f"{place['path']}:[{place['start']}:{place['end']}]")
        duplicates.append(Duplicate(int(header.group(1)), tuple(places)))
    return duplicates


def read_allowed(path: Path = ALLOWED_FILE) -> dict[frozenset[str], str]:
    """``file_a file_b  # reason`` per line; a reason is required."""
    allowed: dict[frozenset[str], str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1) if path.exists() else ():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pair, _, reason = line.partition("#")
        names = pair.split()
        if len(names) != 2 or not reason.strip():
            raise SystemExit(f"{path}:{number}: want 'FILE_A FILE_B  # reason', got {raw!r}")
        allowed[frozenset(names)] = reason.strip()
    return allowed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="list allowed pairs too")
    args = parser.parse_args(argv)
    allowed = read_allowed()
    duplicates = find_duplicates(checked_files())
    refused = [d for d in duplicates if d.files not in allowed]
    for d in duplicates if args.all else refused:
        why = allowed.get(d.files)
        print(f"{d.lines} similar lines: {'  ~  '.join(d.places)}" + (f"  (allowed: {why})" if why else ""))
    print(f"duplicate-code: {len(duplicates)} similar runs of >= {MIN_LINES} lines, {len(refused)} not allowed")
    if refused:
        print(f"make one piece of code serve both, or name the pair in {ALLOWED_FILE.relative_to(ROOT)} with why")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
