"""The committed stubs must match what `python -m shared.protogen` generates."""

from shared import protogen


def test_committed_stubs_match_the_protos():
    stale = protogen.check()
    assert stale == [], f"stale stubs, run `python -m shared.protogen`: {stale}"


def test_stubs_import_from_the_shared_package():
    from shared.proto.rlhf.v1 import feedback_pb2_grpc, policy_pb2, reward_pb2_grpc, trainer_pb2_grpc

    assert policy_pb2.DESCRIPTOR.package == "rlhf.v1"
    for module, service in [
        (feedback_pb2_grpc, "FeedbackService"),
        (reward_pb2_grpc, "RewardService"),
        (trainer_pb2_grpc, "TrainerService"),
    ]:
        assert hasattr(module, f"add_{service}Servicer_to_server")


def test_contract_has_every_rpc_of_the_design():
    from shared.proto.rlhf.v1 import feedback_pb2, policy_pb2, reward_pb2, trainer_pb2

    rpcs = {
        name: [m.name for m in svc.methods]
        for mod in (policy_pb2, reward_pb2, feedback_pb2, trainer_pb2)
        for name, svc in mod.DESCRIPTOR.services_by_name.items()
    }
    assert rpcs == {
        "PolicyService": ["Generate", "GenerateStream", "GetModelInfo"],
        "RewardService": ["Score", "ScoreBatch", "GetModelInfo"],
        "FeedbackService": ["SubmitFeedback", "SubmitFeedbackBatch"],
        "TrainerService": ["GetStatus", "Promote", "Rollback", "Pause", "Resume"],
    }
