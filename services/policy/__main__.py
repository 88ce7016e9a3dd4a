"""``python -m services.policy``: serve a causal LM over gRPC until SIGTERM."""

from __future__ import annotations

import logging
import sys

from shared.config import ConfigError, load_config, log_config
from shared.logs import setup_logging

log = logging.getLogger("services.policy")


def main(argv: list[str] | None = None) -> int:
    from services.policy.config import PolicyConfig

    try:
        config = load_config(PolicyConfig, argv, prog="python -m services.policy")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging("policy", config.log_level, config.log_format)
    log_config(config, log)
    from services.policy.server import PolicyService  # torch/transformers: after --help

    service = PolicyService(config)
    try:
        service.start()
    except Exception:
        log.exception("policy failed to start")
        service.stop(grace_s=0)
        return 1
    service.grpc.wait_for_signal()
    service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
