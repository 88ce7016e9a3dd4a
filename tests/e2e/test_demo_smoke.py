"""`rlhf demo` end to end, briefly: a tiny policy and a reward model in a fresh
model store, the real reward, policy and feedback services as subprocesses on
offset ports, simulated users for a few seconds, then the events on the topics
and the PNG + JSON the demo saves."""

from __future__ import annotations

import json
import random

import pytest

from rlhf_cli.stack import available_services
from shared.kafka import events
from shared.proto.rlhf.v1 import events_pb2
from tests.helpers import free_port_offset, read_topic

NEEDED = ("reward", "policy", "feedback")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not set(NEEDED) <= set(available_services()),
        reason=f"needs services {NEEDED}; this checkout has {available_services()}",
    ),
]


def test_demo_serves_collects_feedback_and_plots(tiny_store, broker, tmp_path):
    from rlhf_cli.main import main

    seed = random.randrange(10**6)  # the simulated user ids carry it: this run's events only
    out = tmp_path / "demo" / "loop.png"
    code = main(
        [
            "demo",
            "--model-store",
            str(tiny_store),
            "--kafka",
            broker.bootstrap,
            "--no-bootstrap",
            "--services",
            ",".join(NEEDED),
            "--port-offset",
            str(free_port_offset()),
            "--log-dir",
            str(tmp_path / "logs"),
            "--minutes",
            "0.25",
            "--sample-every-s",
            "4",
            "--users",
            "8",
            "--concurrency",
            "2",
            "--seed",
            str(seed),
            "--max-new-tokens",
            "12",
            "--out",
            str(out),
        ]
    )
    assert code == 0, [p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*.log")]

    saved = json.loads(out.with_suffix(".json").read_text())
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["totals"]["requests"] > 0 and saved["totals"]["request_errors"] == 0
    v1 = saved["versions"]["v1"]
    assert v1["responses"] >= saved["totals"]["requests"]  # 1 or 2 completions per request
    assert 0.0 <= v1["satisfaction"] <= 1.0 and set(v1["axes"]) == {"helpful", "polite", "correct", "safe", "concise"}
    assert saved["points"] and all(p["version"] == "v1" for p in saved["points"])
    assert any(p["mean_reward"] is not None and p["reward_version"] == "v1" for p in saved["points"])

    prefix = f"sim-user-{seed}-"
    generations = [
        m
        for _, m in read_topic(broker.bootstrap, events.GENERATIONS_TOPIC, events_pb2.GenerationEvent, timeout_s=10)
        if m.user_id.startswith(prefix)
    ]
    assert len(generations) == v1["responses"]
    assert all(g.model_version == "v1" for g in generations)
    generation_ids = {g.generation_id for g in generations}

    accepted = saved["totals"]["feedback_accepted"]
    feedback = [
        m
        for _, m in read_topic(broker.bootstrap, events.FEEDBACK_TOPIC, events_pb2.FeedbackEvent, timeout_s=10)
        if m.user_id.startswith(prefix)
    ]
    assert feedback and len(feedback) == sum(accepted.values())
    assert all(f.generation_id in generation_ids for f in feedback)
    for f in feedback:
        if f.WhichOneof("kind") == "preference":
            assert {f.preference.chosen_generation_id, f.preference.rejected_generation_id} <= generation_ids
