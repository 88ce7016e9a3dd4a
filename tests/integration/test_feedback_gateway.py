"""The feedback gateway end to end: real gRPC server on port 0, real broker; every test runs
against both gRPC servers (--server sync and aio)."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.feedback.config import FeedbackConfig
from services.feedback.server import FeedbackGatewayServer
from shared.kafka import events
from shared.kafka.events import new_id
from shared.proto.rlhf.v1 import events_pb2 as ev
from shared.proto.rlhf.v1 import feedback_pb2, feedback_pb2_grpc
from tests.helpers import read_topic

TOKEN = "test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def start_gateway(broker, **overrides):
    config = FeedbackConfig(
        port=0, metrics_port=-1, kafka=broker.bootstrap, auth_token=TOKEN, grace_period_s=1, **overrides
    )
    server = FeedbackGatewayServer(config)
    port = server.start()
    return server, grpc.insecure_channel(f"127.0.0.1:{port}")


@pytest.fixture(scope="module", params=["sync", "aio"])
def server_mode(request):
    return request.param


@pytest.fixture(scope="module")
def gateway(broker, server_mode):
    server, channel = start_gateway(
        broker, server=server_mode, max_batch_size=5, max_comment_chars=50, max_correction_chars=100
    )
    yield feedback_pb2_grpc.FeedbackServiceStub(channel), channel
    channel.close()
    server.stop(1)


def feedback_on_topic(broker, feedback_ids):
    wanted = set(feedback_ids)
    records = read_topic(broker.bootstrap, events.FEEDBACK_TOPIC, ev.FeedbackEvent)
    return [(r, m) for r, m in records if m.feedback_id in wanted]


def ranking(*groups, **kw):
    return ev.FeedbackEvent(ranking=ev.Ranking(groups=[ev.RankedGroup(generation_ids=list(g)) for g in groups]), **kw)


def rating(score=0.5, **kw):
    return ev.FeedbackEvent(generation_id=kw.pop("generation_id", new_id()), rating=ev.Rating(score=score), **kw)


def test_resubmission_is_answered_with_the_first_answer_and_produced_once(broker, gateway):
    stub, _ = gateway
    event = rating(feedback_id=new_id(), user_id="u1", comment="nice")
    first = stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=event), metadata=AUTH)
    again = stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=event), metadata=AUTH)
    assert not first.duplicate and again.duplicate
    assert (again.feedback_id, again.partition, again.offset) == (first.feedback_id, first.partition, first.offset)
    on_topic = feedback_on_topic(broker, [event.feedback_id])
    assert len(on_topic) == 1
    record, message = on_topic[0]
    assert record.key == event.generation_id.encode() and record.offset == first.offset
    assert message.user_id == "u1" and message.comment == "nice" and message.HasField("created_at")


def test_concurrent_duplicates_produce_once(broker, gateway):
    stub, _ = gateway
    event = rating(feedback_id=new_id())
    answers, barrier = [], threading.Barrier(8)

    def submit():
        barrier.wait()
        answers.append(stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=event), metadata=AUTH))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not a.duplicate for a in answers) == 1 and len({a.offset for a in answers}) == 1
    assert len(feedback_on_topic(broker, [event.feedback_id])) == 1


def test_every_kind_is_accepted_and_ids_are_assigned(broker, gateway):
    stub, _ = gateway
    batch = [
        rating(score=-1.0, source=ev.FEEDBACK_SOURCE_ANNOTATOR),
        ev.FeedbackEvent(generation_id=new_id(), rating=ev.Rating(thumb=ev.THUMB_UP)),
        ev.FeedbackEvent(preference=ev.Preference(chosen_generation_id="gen-a", rejected_generation_id="gen-b")),
        ev.FeedbackEvent(generation_id=new_id(), correction=ev.Correction(response="A better answer.")),
        ev.FeedbackEvent(generation_id=new_id(), flag=ev.Flag(category=ev.FLAG_CATEGORY_OFFENSIVE)),
    ]
    reply = stub.SubmitFeedbackBatch(feedback_pb2.SubmitFeedbackBatchRequest(feedback=batch), metadata=AUTH)
    ids = [r.feedback_id for r in reply.results]
    assert len(ids) == 5 and all(ids) and not any(r.duplicate for r in reply.results)
    on_topic = {m.feedback_id: (r, m) for r, m in feedback_on_topic(broker, ids)}
    assert set(on_topic) == set(ids)
    kinds = [on_topic[i][1].WhichOneof("kind") for i in ids]
    assert kinds == ["rating", "rating", "preference", "correction", "flag"]
    pref_record, pref = on_topic[ids[2]]
    assert pref.generation_id == "gen-a" and pref_record.key == b"gen-a"


def test_a_ranking_is_accepted_and_keyed_by_its_best_generation(broker, gateway):
    stub, _ = gateway
    event = ranking(["best"], ["mid-a", "mid-b"], ["worst"], user_id="u-rank")
    reply = stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=event), metadata=AUTH)
    [(record, message)] = feedback_on_topic(broker, [reply.feedback_id])
    assert record.key == b"best" and message.generation_id == "best"
    assert [list(g.generation_ids) for g in message.ranking.groups] == [["best"], ["mid-a", "mid-b"], ["worst"]]


def test_a_deletion_request_is_accepted_and_keyed_by_its_user(broker, gateway):
    stub, _ = gateway
    user = f"leaving-{new_id()}"
    event = ev.FeedbackEvent(user_id=user, deletion=ev.DataDeletionRequest(reason="please forget me"))
    reply = stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=event), metadata=AUTH)
    [(record, message)] = feedback_on_topic(broker, [reply.feedback_id])
    assert record.key == user.encode() and message.WhichOneof("kind") == "deletion"
    assert message.deletion.reason == "please forget me" and message.generation_id == ""
    with pytest.raises(grpc.RpcError) as err:  # whose data? a deletion must name its user
        stub.SubmitFeedback(
            feedback_pb2.SubmitFeedbackRequest(feedback=ev.FeedbackEvent(deletion=ev.DataDeletionRequest())),
            metadata=AUTH,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "feedback.user_id" in err.value.details()


@pytest.mark.parametrize(
    "event,field",
    [
        (ev.FeedbackEvent(generation_id="g"), "feedback.kind"),
        (ev.FeedbackEvent(rating=ev.Rating(score=0.1)), "feedback.generation_id"),
        (rating(score=1.01), "feedback.rating.score"),
        (rating(score=float("nan")), "feedback.rating.score"),
        (
            ev.FeedbackEvent(preference=ev.Preference(chosen_generation_id="a", rejected_generation_id="a")),
            "feedback.preference.rejected_generation_id",
        ),
        (
            ev.FeedbackEvent(generation_id="g", preference=ev.Preference(rejected_generation_id="b")),
            "feedback.preference.chosen_generation_id",
        ),
        (
            ev.FeedbackEvent(generation_id="g", preference=ev.Preference(chosen_generation_id="g")),
            "feedback.preference.rejected_generation_id",
        ),
        (rating(comment="x" * 51), "feedback.comment"),
        (
            ev.FeedbackEvent(generation_id="g", correction=ev.Correction(response="x" * 101)),
            "feedback.correction.response",
        ),
        (ev.FeedbackEvent(generation_id="g", flag=ev.Flag(category=42)), "feedback.flag.category"),
        (ranking(["a", "b"]), "feedback.ranking.groups"),
        (ranking(["a"], ["b", "a"]), "feedback.ranking.groups[1].generation_ids[1]"),
        (ranking(["a"], ["x" * 129]), "feedback.ranking.groups[1].generation_ids[0]"),
        (ranking(*[[f"g{i}"] for i in range(17)]), "feedback.ranking.groups"),
        (ranking(["a"], ["b"], generation_id="c"), "feedback.generation_id"),
    ],
    ids=[
        "kind",
        "generation",
        "range",
        "nan",
        "self-preference",
        "no-chosen",
        "no-rejected",
        "comment",
        "correction",
        "flag",
        "ranking-one-group",
        "ranking-id-twice",
        "ranking-long-id",
        "ranking-too-many",
        "ranking-key-not-ranked",
    ],
)
def test_invalid_feedback_names_the_field(gateway, event, field):
    stub, _ = gateway
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=event), metadata=AUTH)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field + ":"), info.value.details()


def test_invalid_batch_item_is_named_and_nothing_is_produced(broker, gateway):
    stub, _ = gateway
    batch = [rating(feedback_id=new_id()) for _ in range(4)]
    batch[3].rating.score = 7
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitFeedbackBatch(feedback_pb2.SubmitFeedbackBatchRequest(feedback=batch), metadata=AUTH)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("feedback[3].rating.score:")
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitFeedbackBatch(feedback_pb2.SubmitFeedbackBatchRequest(feedback=[rating()] * 6), metadata=AUTH)
    assert info.value.details().startswith("feedback:") and "limit is 5" in info.value.details()
    assert feedback_on_topic(broker, [e.feedback_id for e in batch]) == []


def test_many_concurrent_callers_lose_nothing(broker, gateway):
    stub, _ = gateway
    per_caller = [[rating(feedback_id=new_id()) for _ in range(20)] for _ in range(8)]
    answers: list = []

    def submit(events_to_send):
        for event in events_to_send:
            answers.append(stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=event), metadata=AUTH))

    threads = [threading.Thread(target=submit, args=(batch,)) for batch in per_caller]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent = {e.feedback_id for batch in per_caller for e in batch}
    assert {a.feedback_id for a in answers} == sent and not any(a.duplicate for a in answers)
    on_topic = feedback_on_topic(broker, sent)
    assert sorted(m.feedback_id for _, m in on_topic) == sorted(sent)  # each accepted event once
    assert {(a.partition, a.offset) for a in answers} == {(r.partition, r.offset) for r, _ in on_topic}


def test_request_id_is_returned_and_kept_when_given(gateway):
    stub, _ = gateway
    request = feedback_pb2.SubmitFeedbackRequest(feedback=rating())
    _, call = stub.SubmitFeedback.with_call(request, metadata=AUTH + (("x-request-id", "req-42"),))
    assert dict(call.initial_metadata())["x-request-id"] == "req-42"
    _, call = stub.SubmitFeedback.with_call(request, metadata=AUTH)
    assert dict(call.initial_metadata())["x-request-id"]


def test_bearer_token_is_required_except_for_health(gateway):
    stub, channel = gateway
    request = feedback_pb2.SubmitFeedbackRequest(feedback=rating())
    for metadata, detail in [((), "missing bearer token"), ((("authorization", "Bearer nope"),), "invalid")]:
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitFeedback(request, metadata=metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and detail in info.value.details()
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_rate_limit_is_per_client_with_a_retry_hint(broker, server_mode):
    server, channel = start_gateway(broker, server=server_mode, rate_limit=0.01, rate_burst=3, max_batch_size=3)
    try:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        alice = AUTH + (("x-client-id", "alice"),)
        stub.SubmitFeedbackBatch(feedback_pb2.SubmitFeedbackBatchRequest(feedback=[rating(), rating()]), metadata=alice)
        stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=rating()), metadata=alice)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=rating()), metadata=alice)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        retry_after = dict(info.value.trailing_metadata())["retry-after-seconds"]
        assert float(retry_after) > 0
        bob = AUTH + (("x-client-id", "bob"),)
        assert stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(feedback=rating()), metadata=bob).feedback_id
    finally:
        channel.close()
        server.stop(1)


def test_an_oversized_request_names_the_limit_and_the_health_port_answers(broker, server_mode):
    server, channel = start_gateway(broker, server=server_mode, max_message_bytes=2048, health_port=0)
    try:
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
        request = feedback_pb2.SubmitFeedbackRequest(feedback=rating(comment="x" * 3000))
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitFeedback(request, metadata=AUTH)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("request:") and "limit is 2048 bytes" in info.value.details()
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc.health_port}") as health_channel:
            health = health_pb2_grpc.HealthStub(health_channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
        server.stop(1)
