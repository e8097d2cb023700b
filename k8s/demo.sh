#!/usr/bin/env bash
# Opens the installed chart's demo: waits for the RayService, port-forwards the web app
# Service (its nginx proxies /serve/ and /backend/), prints the URL; Ctrl-C stops.
#   k8s/demo.sh [NAMESPACE] [RELEASE]      (defaults: marcelle-torch marcelle-torch)
#   PORT=8080 k8s/demo.sh                  (local port; 0 = any free port)
#   KUBE_CONTEXT=kind-marcelle-torch       (kubectl context; default: the current one)
#   WAIT_TIMEOUT=30m                       (RayService Ready; see below)
#   DRY_RUN=1 k8s/demo.sh                  (print the commands, run nothing)
set -euo pipefail

namespace="${1:-marcelle-torch}"
release="${2:-marcelle-torch}"
port="${PORT:-8080}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Our pinned kubectl first (tests/chart/install-tools.sh), then PATH.
kubectl="$repo/.cache/k8s-tools/bin/kubectl"
[[ -x "$kubectl" ]] || kubectl="$(command -v kubectl || true)"
dry_run="${DRY_RUN:-0}"
if [[ "$dry_run" == 1 ]]; then
  kubectl="${kubectl:-kubectl}"
elif [[ -z "$kubectl" ]] || ! "$kubectl" version --client >/dev/null 2>&1; then
  echo "demo.sh: error: kubectl not found (run tests/chart/install-tools.sh)" >&2
  exit 2
fi
k=("$kubectl")
[[ -z "${KUBE_CONTEXT:-}" ]] || k+=(--context "$KUBE_CONTEXT")
k+=(-n "$namespace")
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  [[ "$dry_run" == 1 ]] || "$@"
}

# The chart names objects <release>-marcelle-torch unless the release name contains it.
fullname="$release"
[[ "$release" == *marcelle-torch* ]] || fullname="$release-marcelle-torch"
fullname="${fullname:0:40}"
fullname="${fullname%-}"

if [[ "$dry_run" != 1 ]] && ! "${k[@]}" get "svc/$fullname-webapp" >/dev/null 2>&1; then
  echo "demo.sh: error: no Service $fullname-webapp in namespace $namespace (is the chart installed?)" >&2
  exit 2
fi

# 30m by default: on a cloud cluster whose model runs on GPUs, the first Ready may wait for the
# autoscaler to add a GPU node (5-10 min) and for that node to pull the CUDA Ray image (several
# GB, 5-15 min). Weights are in the image: nothing is trained at start-up.
echo "waiting for RayService $fullname to be Ready (up to ${WAIT_TIMEOUT:-30m})..."
run "${k[@]}" wait "rayservice/$fullname" --for=condition=Ready --timeout="${WAIT_TIMEOUT:-30m}"
run "${k[@]}" rollout status "deployment/$fullname-webapp" --timeout=5m
run "${k[@]}" rollout status "deployment/$fullname-backend" --timeout=5m

forward=("${k[@]}" port-forward --address 127.0.0.1 "svc/$fullname-webapp" "${port/#0/}:80")
if [[ "$dry_run" == 1 ]]; then
  run "${forward[@]}"
  exit 0
fi
log="$(mktemp)"
trap 'rm -f "$log"; [[ -n "${pf:-}" ]] && kill "$pf" 2>/dev/null || true' EXIT
"${forward[@]}" >"$log" 2>&1 &
pf=$!
for _ in $(seq 1 60); do
  if bound="$(grep -oE '127\.0\.0\.1:[0-9]+' "$log" | head -n1)" && [[ -n "$bound" ]]; then
    echo
    echo "marcelle-torch demo: http://$bound/"
    echo "  model API: http://$bound/serve/v1/models/digits   backend: http://$bound/backend/"
    echo "  log in (when the backend's authentication is on): helm -n $namespace get notes $release"
    echo "Ctrl-C to stop."
    wait "$pf"
    exit $?
  fi
  kill -0 "$pf" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.5
done
echo "demo.sh: error: port-forward did not start:" >&2
cat "$log" >&2
exit 1
