"""`rlhf simulate --app assistant` against in-process fake policy and feedback
services: the same public calls the demo simulator makes (Generate with chat
messages and num_return_sequences, SubmitFeedbackBatch), and the CLI wiring."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc

from assistant.dataset import load_items
from assistant.judge import find_item
from assistant.simulator import AssistantSimulator, AssistantSimulatorConfig
from rlhf_cli.main import build_parser
from rlhf_cli.simulate_cmd import assistant_config
from shared.proto.rlhf.v1 import common_pb2, feedback_pb2, feedback_pb2_grpc, policy_pb2, policy_pb2_grpc


class FakePolicy(policy_pb2_grpc.PolicyServiceServicer):
    """Answers the first completion with the reference answer and the others with a refusal."""

    def __init__(self):
        self.requests: list[policy_pb2.GenerateRequest] = []
        self.lock = threading.Lock()

    def GetModelInfo(self, request, context):
        return common_pb2.ModelInfo(has_chat_template=True)

    def Generate(self, request, context):
        with self.lock:
            self.requests.append(request)
            n = len(self.requests)
        item = find_item(request.messages[-1].content)
        texts = [item.reference] + ["I'm sorry, but I can't help with that."] * 3
        completions = [
            policy_pb2.Completion(generation_id=f"gen-{n}-{i}", text=texts[i], index=i)
            for i in range(max(1, request.sampling.num_return_sequences))
        ]
        return policy_pb2.GenerateResponse(request_id=f"r{n}", model_version="v1", completions=completions)


class FakeGateway(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self):
        self.events: list = []

    def SubmitFeedbackBatch(self, request, context):
        self.events.extend(request.feedback)
        results = [feedback_pb2.SubmitFeedbackResponse(feedback_id=e.feedback_id) for e in request.feedback]
        return feedback_pb2.SubmitFeedbackBatchResponse(results=results)


def test_the_simulator_asks_in_chat_form_and_sends_feedback():
    policy, gateway = FakePolicy(), FakeGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(policy, server)
    feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(gateway, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        addr = f"127.0.0.1:{port}"
        config = AssistantSimulatorConfig(addr, addr, users=10, concurrency=2, requests=40, prompt_split="heldout")
        simulator = AssistantSimulator(config).start()
        simulator.join(timeout_s=60)
    finally:
        server.stop(0)
    stats = simulator.stats
    assert stats.requests == 40 and stats.request_errors == 0 and stats.feedback_errors == 0
    assert all(r.messages and r.messages[-1].role == "user" and not r.prompt for r in policy.requests)
    heldout = {i.question for i in load_items() if i.split == "heldout"}
    assert {r.messages[-1].content for r in policy.requests} <= heldout
    shown = [r.sampling.num_return_sequences for r in policy.requests]
    assert 2 in shown
    kinds = {e.WhichOneof("kind") for e in gateway.events}
    assert "preference" in kinds and stats.feedback_total == len(gateway.events)
    chosen = {e.preference.chosen_generation_id for e in gateway.events if e.WhichOneof("kind") == "preference"}
    assert sum(c.endswith("-0") for c in chosen) >= 0.8 * len(chosen)  # the right answer beats the refusal
    tallies = stats.tallies()["v1"]
    assert tallies.responses == sum(shown) and tallies.good >= 40
    assert "v1" in stats.live_line()


def test_rlhf_simulate_takes_app_assistant():
    args = build_parser().parse_args(
        ["simulate", "--app", "assistant", "--users", "3", "--preference", "assistant.tastes:strict_utility",
         "--feedback-mix", "corrections=0", "--prompts", "train", "--requests", "5"]
    )  # fmt: skip
    config = assistant_config(args, "127.0.0.1:1", "127.0.0.1:2", requests=args.requests)
    assert args.app == "assistant" and config.users == 3 and config.prompt_split == "train"
    assert config.preference.__name__ == "strict_utility" and config.feedback_mix.corrections == 0
    assert build_parser().parse_args(["simulate"]).app == "demo"
