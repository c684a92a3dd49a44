"""The Runtime pod's gRPC edge: the servicer, the engine host, response streams, auth,
liveness, status-code mapping, proto conversion and the `serve` command."""
