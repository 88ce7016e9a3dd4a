"""OpenAI-compatible HTTP front door over the policy and feedback gRPC services (``python -m services.openai_api``)."""
