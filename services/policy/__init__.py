"""The policy service: batched text generation over gRPC (``python -m services.policy``)."""
