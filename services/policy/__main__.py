"""``python -m services.policy``: serve a causal LM over gRPC until SIGTERM."""

from __future__ import annotations

import sys

from shared.service_main import run_service


def main(argv: list[str] | None = None) -> int:
    from services.policy.config import PolicyConfig

    def build(config: PolicyConfig):
        from services.policy.server import PolicyService  # torch/transformers: after --help

        return PolicyService(config)

    # PolicyService.start serves /metrics itself (tests read the bound port).
    return run_service(PolicyConfig, "policy", build, argv, serve_metrics=False)


if __name__ == "__main__":
    sys.exit(main())
