"""Talking to agents: the gRPC transport client (and, later, the dispatcher)."""
