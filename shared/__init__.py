"""Code every rlhf-loop service shares: config, Kafka I/O, events, metrics, model store, gRPC plumbing."""
