"""The reward scorer's request rules and its refusal to score before loading."""

from __future__ import annotations

import pytest

from services.reward.config import RewardConfig
from services.reward.scorer import RewardLimits, RewardScorer
from shared.config import ConfigError
from shared.errors import InvalidArgument, Unavailable
from shared.models.store import ModelStore


@pytest.fixture()
def scorer(tmp_path):
    return RewardScorer(ModelStore(tmp_path), RewardLimits(max_batch_size=2, max_prompt_chars=5, max_response_chars=5))


@pytest.mark.parametrize(
    "prompts,responses,field",
    [
        ([], [], "items"),
        (["a"] * 3, ["b"] * 3, "items"),
        (["a", "a"], ["b", ""], "items[1].response"),
        (["a" * 6], ["b"], "items[0].prompt"),
        (["a"], ["b" * 6], "items[0].response"),
    ],
)
def test_batch_rules_name_the_field(scorer, prompts, responses, field):
    with pytest.raises(InvalidArgument) as info:
        scorer.check_batch(prompts, responses)
    assert info.value.field == field


def test_an_empty_prompt_is_allowed_but_not_an_empty_response(scorer):
    scorer.check_pair("", "ok")
    with pytest.raises(InvalidArgument, match="^response"):
        scorer.check_pair("q", " ")


def test_nothing_is_scored_before_a_version_is_loaded(scorer):
    with pytest.raises(Unavailable):
        scorer.score(["q"], ["r"])
    with pytest.raises(Unavailable, match="no reward version"):
        scorer.load_current()


def test_config_defaults_and_validation():
    config = RewardConfig()
    assert (config.port, config.metrics_port, config.backend) == (50052, 9102, "onnx")
    with pytest.raises(ConfigError, match="--threads"):
        RewardConfig(threads=0)


def test_entry_point_help_lists_the_backend_flag():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "services.reward", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "--backend" in out.stdout and "RLHF_REWARD_BACKEND" in out.stdout


def _tiny_onnx_scorer(path):
    """A real ONNX graph with the reward model's inputs and output: score = tokens in the mask."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["mask", "axes"], ["scores"], keepdims=0),
        ],
        "tiny-reward",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch"])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.mark.parametrize("cuda_starts", [True, False])
def test_onnx_backend_asks_for_cuda_first_when_onnxruntime_has_it(tmp_path, monkeypatch, cuda_starts):
    """No GPU here: the provider list is what onnxruntime-gpu reports; the session is real (CPU)."""
    import onnxruntime as ort
    import torch

    from services.reward.scorer import CPU_PROVIDER, CUDA_PROVIDER, OnnxBackend

    real_session = ort.InferenceSession
    requested = []

    def session(path, options, providers):
        requested.append(list(providers))
        built = real_session(path, options, providers=[CPU_PROVIDER])
        if cuda_starts:  # what a session on a GPU reports
            monkeypatch.setattr(built, "get_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
        return built

    preloaded = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
    monkeypatch.setattr(ort, "preload_dlls", lambda: preloaded.append(True))
    monkeypatch.setattr(ort, "InferenceSession", session)
    backend = OnnxBackend(_tiny_onnx_scorer(tmp_path / "model.onnx"), threads=1)
    assert requested == [[CUDA_PROVIDER, CPU_PROVIDER]] and preloaded == [True]
    # Where CUDA cannot start, onnxruntime runs on the CPU, and the backend says so.
    assert (backend.provider, backend.device) == ((CUDA_PROVIDER, "cuda") if cuda_starts else (CPU_PROVIDER, "cpu"))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert backend.run(torch.zeros_like(mask), mask).tolist() == [[2.0], [3.0]]  # [batch, heads]


def test_onnx_backend_on_a_cpu_build_uses_the_cpu_provider(tmp_path):
    from services.reward.scorer import CPU_PROVIDER, OnnxBackend, onnx_providers

    assert onnx_providers(["AzureExecutionProvider", CPU_PROVIDER]) == [CPU_PROVIDER]
    backend = OnnxBackend(_tiny_onnx_scorer(tmp_path / "model.onnx"), threads=1)
    assert (backend.provider, backend.device) == (CPU_PROVIDER, "cpu")


class _RowSumBackend:
    """A scoring backend computing sum(id * position) over the real tokens; it records the widths it was given."""

    name, device, splits_by_length = "row-sum", "cpu", True

    def __init__(self):
        self.widths: list[int] = []

    def run(self, input_ids, attention_mask):
        """Two "heads": the row sum and its double, float64 [batch, 2], as backends return."""
        import torch

        self.widths.append(input_ids.shape[1])
        positions = torch.arange(1, input_ids.shape[1] + 1)
        row_sum = (input_ids * attention_mask * positions).sum(dim=1).double()
        return torch.stack([row_sum, 2 * row_sum], dim=1).numpy()


def _right_padded(lengths):
    import torch

    width = max(lengths)
    ids = torch.randint(1, 100, (len(lengths), width), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    return ids * mask, mask


def test_length_buckets_give_each_pair_its_own_score_with_less_padding():
    from services.reward.scorer import BUCKET_PAIRS, run_in_length_buckets

    lengths = [(i * 7) % 30 + 1 for i in range(2 * BUCKET_PAIRS + 3)]
    ids, mask = _right_padded(lengths)
    whole = _RowSumBackend().run(ids, mask)
    backend = _RowSumBackend()
    assert run_in_length_buckets(backend, ids, mask).tolist() == whole.tolist()
    assert len(backend.widths) == 3 and sorted(backend.widths) == backend.widths and backend.widths[0] < max(lengths)


def test_left_padded_or_small_batches_run_as_one():
    from services.reward.scorer import BUCKET_PAIRS, run_in_length_buckets

    ids, mask = _right_padded([(i % 5) + 1 for i in range(2 * BUCKET_PAIRS)])
    flipped_ids, flipped_mask = ids.flip(1), mask.flip(1)  # padding on the left
    backend = _RowSumBackend()
    run_in_length_buckets(backend, flipped_ids, flipped_mask)
    run_in_length_buckets(backend, ids[:BUCKET_PAIRS], mask[:BUCKET_PAIRS])
    assert backend.widths == [5, 5]
