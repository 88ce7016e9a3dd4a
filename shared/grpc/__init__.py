"""gRPC transport: servers, channels, auth, TLS, health checks."""
