"""The PolicyService gRPC servicer and the service lifecycle.

Servicer methods stay short (after grpc's route_guide example): turn the
request's sampling fields into a SamplingRequest (unset fields take the
serving version's model defaults, else the server's: see
services.policy.sampling), hand it to the engine, build the reply and publish
one GenerationEvent per returned sequence. Batching, sampling and model swaps
live in the engine; which engine answers (stable or canary, by the request's user_id) is the CanaryRouter's call.
"""

from __future__ import annotations

import logging

from services.policy.canary import CanaryRouter
from services.policy.config import PolicyConfig
from services.policy.engine import GenerationEngine
from services.policy.model import POLICY_KIND, ModelBundle, load_bundle, load_from_store
from services.policy.requests import FinishReason, GenerationHandle, SequenceResult
from services.policy.resident import collect_unused
from services.policy.sampling import SamplingDefaults, SamplingRequest, SamplingSpec
from shared import metrics
from shared.errors import Unavailable
from shared.grpc.server import GrpcServer, ServiceBinding
from shared.kafka import events
from shared.kafka.publisher import BufferedEventPublisher
from shared.logs import request_id_var
from shared.models.prompting import ChatMessage
from shared.models.store import CanaryPointer, ModelStore
from shared.models.update_follower import ModelUpdateFollower
from shared.proto.rlhf.v1 import common_pb2, events_pb2, policy_pb2, policy_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name
_FINISH = {
    FinishReason.EOS: events_pb2.FINISH_REASON_EOS,
    FinishReason.LENGTH: events_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: events_pb2.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.CANCELLED: events_pb2.FINISH_REASON_UNSPECIFIED,
}


def request_from_proto(sampling: common_pb2.SamplingParams) -> SamplingRequest:
    """Proto → the fields as sent (unset optional fields are None: the engine fills them in
    from the serving version's model defaults, else the server's)."""

    def opt(name):
        return getattr(sampling, name) if sampling.HasField(name) else None

    return SamplingRequest(
        max_new_tokens=opt("max_new_tokens"),
        temperature=opt("temperature"),
        top_p=opt("top_p"),
        top_k=opt("top_k"),
        stop=tuple(sampling.stop),
        seed=opt("seed"),
        num_return_sequences=opt("num_return_sequences"),
    )


def spec_from_proto(sampling: common_pb2.SamplingParams, defaults: SamplingDefaults) -> SamplingSpec:
    """Proto → validated spec; unset optional fields take ``defaults``."""
    return request_from_proto(sampling).resolve(defaults)


def spec_to_proto(spec: SamplingSpec, seed: int | None = None) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(
        max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k,
        stop=list(spec.stop),
        seed=spec.seed if seed is None else seed,
        num_return_sequences=spec.num_return_sequences,
    )


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, config: PolicyConfig, publisher: BufferedEventPublisher):
        self.config = config
        self.defaults = config.sampling_defaults
        self.publisher = publisher
        self.engine: GenerationEngine | None = None  # the stable engine, set once the model is loaded
        self.router: CanaryRouter | None = None

    def _engine(self) -> GenerationEngine:
        if self.engine is None:
            raise Unavailable("the policy model is still loading; retry shortly")
        return self.engine

    def _submit(self, request, context, *, stream: bool) -> GenerationHandle:
        spec = request_from_proto(request.sampling)
        messages = [ChatMessage(m.role, m.content) for m in request.messages]
        router = self.router
        engine = router.engine_for(request.user_id) if router is not None else self._engine()

        def submit(to: GenerationEngine) -> GenerationHandle:
            return to.submit(request.prompt, spec, messages=messages, stream=stream, request_id=request_id_var.get())

        try:
            handle = submit(engine)
        except Unavailable:
            rerouted = router.engine_for(request.user_id) if router is not None else engine
            if rerouted is engine:
                raise
            handle = submit(rerouted)  # the canary ended between routing and submitting
        context.add_callback(handle.cancel)  # client gone → stop decoding its rows
        return handle

    def Generate(self, request, context):
        handle = self._submit(request, context, stream=False)
        result = handle.result()
        self._publish(request, handle, result.sequences)
        return policy_pb2.GenerateResponse(
            request_id=result.request_id,
            model_version=result.model_version,
            prompt_tokens=result.prompt_tokens,
            completions=[
                policy_pb2.Completion(
                    generation_id=s.generation_id,
                    text=s.text,
                    finish_reason=_FINISH[s.finish_reason],
                    completion_tokens=s.completion_tokens,
                    index=s.index,
                )
                for s in result.sequences
            ],
        )

    def GenerateStream(self, request, context):
        handle = self._submit(request, context, stream=True)
        for chunk in handle.chunks():
            yield policy_pb2.GenerateStreamResponse(
                request_id=handle.request_id,
                model_version=handle.model_version,
                generation_id=chunk.generation_id,
                index=chunk.index,
                text_delta=chunk.text_delta,
                finish_reason=_FINISH[chunk.finish_reason] if chunk.finish_reason else 0,
                completion_tokens=chunk.completion_tokens,
                prompt_tokens=len(handle.prompt_ids),
            )
        self._publish(request, handle, handle.result().sequences)

    def GetModelInfo(self, request, context):
        bundle = self._engine().bundle
        defaults = bundle.sampling_defaults(self.defaults)  # the model's own, else the server's
        info = common_pb2.ModelInfo(
            kind=common_pb2.MODEL_KIND_POLICY,
            version=bundle.version,
            parent_version=bundle.parent_version,
            architecture=bundle.architecture,
            num_parameters=bundle.num_parameters,
            context_window=bundle.context_window,
            eval_metrics=bundle.eval_metrics,
            device=bundle.device,
            backend="torch",
            default_sampling=common_pb2.SamplingParams(
                max_new_tokens=defaults.max_new_tokens,
                temperature=defaults.temperature,
                top_p=defaults.top_p,
                top_k=defaults.top_k,
                num_return_sequences=1,
            ),
            limits={
                "max_new_tokens": self.defaults.max_new_tokens_cap,
                "num_return_sequences": self.defaults.max_return_sequences,
                "context_window": bundle.context_window,
                "max_batch_size": self.config.max_batch_size,
                "max_queue": self.config.max_queue,
                "max_message_bytes": self.config.max_message_bytes,
                "max_chat_messages": self.config.max_chat_messages,
            },
            has_chat_template=bundle.has_chat_template,
        )
        if bundle.created_at:
            info.created_at.FromNanoseconds(int(bundle.created_at * 1e9))
        return info

    def _publish(self, request, handle: GenerationHandle, sequences: list[SequenceResult]) -> None:
        """One event per finished sequence. Its prompt is the text that was encoded
        (a chat rendered by the template of the version that answered), so the
        trainer rebuilds the exact prompt ids; the messages ride along for apps."""
        messages = [common_pb2.ChatMessage(role=m.role, content=m.content) for m in handle.messages]
        for seq in sequences:
            if seq.finish_reason is FinishReason.CANCELLED:
                continue
            event = events_pb2.GenerationEvent(
                event_id=events.new_id(),
                generation_id=seq.generation_id,
                request_id=handle.request_id,
                prompt=handle.prompt,
                response=seq.text,
                model_version=handle.model_version,
                sampling=spec_to_proto(handle.spec, seed=seq.seed),
                created_at=events.now_timestamp(),
                prompt_tokens=len(handle.prompt_ids),
                completion_tokens=seq.completion_tokens,
                finish_reason=_FINISH[seq.finish_reason],
                sequence_index=seq.index,
                user_id=request.user_id,
                metadata=dict(request.metadata),
                messages=messages,
            )
            self.publisher.publish(seq.generation_id, event)


class PolicyService:
    """gRPC server + engine + event publisher + model-update watcher."""

    def __init__(self, config: PolicyConfig):
        self.config = config
        self.publisher = BufferedEventPublisher(
            config.kafka,
            events.GENERATIONS_TOPIC,
            capacity=config.event_buffer,
            producer_overrides=config.kafka_client_options(),
        )
        self.servicer = PolicyServicer(config, self.publisher)
        self.grpc = GrpcServer(
            config,
            "policy",
            [ServiceBinding(policy_pb2_grpc.add_PolicyServiceServicer_to_server, self.servicer, SERVICE_NAME)],
        )
        self.engine: GenerationEngine | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.updates: ModelUpdateFollower | None = None

    def load_initial(self) -> ModelBundle:
        c = self.config
        if c.model_dir:
            return load_bundle(c.model_dir, c.policy_version or "local", device=c.device)
        return load_from_store(c.model_store, c.policy_version or None, device=c.device)

    def start(self) -> int:
        """Listen (NOT_SERVING), load the model, then report SERVING; returns the gRPC port."""
        self.port = self.grpc.start()
        self.metrics_port = metrics.start_metrics_server(self.config.metrics_port, self.config.metrics_bind_host)
        bundle = self.load_initial()
        self.engine = GenerationEngine(bundle, self.config.engine_settings).start()
        self.router = CanaryRouter(self.engine)
        self.servicer.engine, self.servicer.router = self.engine, self.router
        self._label_version(bundle)
        if self.config.watch_updates and not self.config.model_dir:
            self.updates = ModelUpdateFollower(
                POLICY_KIND,
                ModelStore(self.config.model_store),
                self._swap_to,
                lambda: self.engine.bundle.version if self.engine else None,
                self.config.kafka,
                client_id="policy-updates",
                kafka_options=self.config.kafka_consumer_options(),
                canary=self._serve_canary,
                serving_canary=self.router.serving_canary,
            )
            self.updates.apply_canary()  # a replica (re)starting during a canary rollout serves it too
            self.updates.start()
        self.grpc.set_serving(True)
        log.info("policy serving", extra={"version": bundle.version, "port": self.port})
        return self.port

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, let in-flight calls finish, then stop the engine and flush events."""
        self.grpc.stop(grace_s)
        if self.updates is not None:
            self.updates.stop()
        retired = self.router.clear() if self.router is not None else None
        if retired is not None:
            retired.stop()
        if self.engine is not None:
            self.engine.stop()
        self.publisher.close()

    def _label_version(self, bundle: ModelBundle) -> None:
        metrics.MODEL_VERSION.info({"kind": "policy", "version": bundle.version, "architecture": bundle.architecture})

    def _swap_to(self, version: str, manifest_sha256: str) -> None:
        """Load ``version`` (checked against the announced manifest) and serve it from the next batch.
        A canary that completes is already loaded: its bundle is reused."""
        canary = self.router.canary if self.router is not None else None
        if canary is not None and canary.bundle.version == version:
            bundle = canary.bundle
        else:
            bundle = load_from_store(
                self.config.model_store, version, device=self.config.device, expected_manifest_sha256=manifest_sha256
            )
        assert self.engine is not None
        self.engine.swap(bundle)
        self._label_version(bundle)
        del bundle, canary
        collect_unused()  # the adapter swapped out, if the engine is idle (else after its batch)

    def _serve_canary(self, pointer: CanaryPointer | None, manifest_sha256: str) -> None:
        """Serve ``pointer``'s version to its share of users (a second engine), or retire the canary."""
        assert self.router is not None and self.engine is not None
        if pointer is None:
            retired = self.router.clear()
            if retired is not None:
                log.info("canary retired", extra={"version": retired.bundle.version})
                retired.stop()  # its queued requests finish first
                del retired
                collect_unused()
            return
        current = self.router.canary
        if current is not None and current.bundle.version == pointer.version:
            self.router.set_share(pointer.share)
            return
        config = self.config
        bundle = load_from_store(
            config.model_store, pointer.version, device=config.device, expected_manifest_sha256=manifest_sha256
        )
        engine = GenerationEngine(bundle, self.config.engine_settings).start()
        retired = self.router.set_canary(engine, pointer.share)
        if retired is not None:
            retired.stop()
        log.info(
            "canary serving",
            extra={"version": pointer.version, "share": pointer.share, "stable": self.engine.bundle.version},
        )
