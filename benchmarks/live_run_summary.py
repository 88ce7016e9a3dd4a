"""One table row per finished `rlhf demo` run: what docs/BENCHMARKS.md's live tables show.

A run is the JSON that `rlhf demo --out RUN.png` writes beside its plot (RUN.json)
and the trainer's log in its `--log-dir`. Per run: satisfaction of policy v1 and
of the latest served version (responses in brackets), the demo's gain ± standard
error, the share of all the run's responses that satisfied (what the users
got over the 10 minutes), the users' own utility, KL to v1, and from the
trainer's log the policy steps, gate decisions, promotions and reward versions. Every served version
follows on its own line.

    python -m benchmarks.live_run_summary runs/issue10/rloo-on:runs/issue10/logs-rloo-on ...
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


def served(version: dict) -> str:
    return f"{100 * version['satisfaction']:.1f}% ({version['responses']:,})"


def summarise(run_json: Path, log_dir: Path) -> list[str]:
    run = json.loads(run_json.read_text())
    versions, headline = run["versions"], run["headline"]
    log = (log_dir / "trainer.log").read_text(errors="replace")
    latest = headline["latest_version"]
    responses = sum(v["responses"] for v in versions.values())
    whole_run = sum(v["satisfaction"] * v["responses"] for v in versions.values()) / responses
    promoted = latest != "v1"
    gain = f"{headline['gain_points']:+.1f} ± {headline['gain_standard_error_points']:.1f}" if promoted else "0"
    kl = f"{headline['latest_kl']:.2f}" if promoted and headline.get("latest_kl") is not None else "-"
    decided = [line for line in log.splitlines() if "policy candidate decided" in line]
    # A candidate waiting for enough held-out prompts was not tested.
    gate_tests = sum("'heldout_too_small'" not in line for line in decided)
    promotions = sum("'promoted': True" in line for line in decided)
    row = " | ".join(
        [
            run_json.stem,
            served(versions["v1"]),
            f"{latest} {served(versions[latest])}",
            gain,
            f"{100 * whole_run:.1f}%",
            f"{versions['v1']['user_utility']:.3f} → {versions[latest]['user_utility']:.3f}",
            kl,
            str(count(r"policy step \{", log)),
            f"{gate_tests} / {promotions}",
            str(count(r"'kind': 'reward', 'version'", log)),
            f"{run['totals']['requests']:,}",
        ]
    )
    lines = [f"| {row} |"]
    for name in sorted(versions, key=lambda v: int(v.lstrip("v"))):
        v = versions[name]
        kl_v = f"{v['kl']:.2f}" if v.get("kl") is not None else "-"
        lines.append(f"    {name}: {served(v)}, user utility {v['user_utility']:.3f}, KL {kl_v}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs",
        nargs="+",
        help="RUN[:LOG_DIR] (RUN: the --out path without .png; LOG_DIR default: RUN's folder/logs-NAME)",
    )
    args = parser.parse_args()
    print(
        "| run | v1 satisfied (served) | latest version (served) | gain | whole run satisfied "
        "| user utility v1 → latest | KL to v1 | policy steps | gate tests / promoted | reward versions | requests |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for spec in args.runs:
        run, _, logs = spec.partition(":")
        run_path = Path(run).with_suffix(".json")
        log_dir = Path(logs) if logs else run_path.parent / f"logs-{run_path.stem}"
        for needed in (run_path, log_dir / "trainer.log"):
            if not needed.is_file():
                parser.error(
                    f"{spec}: no file at {needed} (RUN is rlhf demo's --out without .png, LOG_DIR its --log-dir)"
                )
        print("\n".join(summarise(run_path, log_dir)))


if __name__ == "__main__":
    main()
