#!/usr/bin/env bash
# The whole demo on a local kind cluster, in one command (`make kind-demo`):
#   1. create the kind cluster from k8s/kind-config.yaml (unless it exists),
#   2. build the CPU images (weights first: the others copy its weights) and `kind load` them
#      (the chart's kind values say imagePullPolicy: Never, so nothing is pulled from a registry),
#   3. install the pinned KubeRay operator (operator-config/versions.env + its values),
#   4. install the chart with the kind value set (tests/e2e/kind-values.yaml),
#   5. wait for the RayService and the Deployments, print the chart's NOTES (how to log in),
#      then port-forward the web app and print its URL (k8s/demo.sh); Ctrl-C stops the forward.
#
#   k8s/kind-demo.sh [--dry-run]        DRY_RUN=1 also works: print the commands, run nothing
# Environment: CLUSTER (marcelle-torch), NAMESPACE (marcelle-torch), RELEASE (marcelle-torch),
#   OPERATOR_NAMESPACE (kuberay-system: the operator's, and the only one the chart's
#   NetworkPolicy then admits to the Ray head), IMAGE_TAG (0.1.0), REGISTRY (marcelle-torch),
#   PORT (8080; 0 = any free port),
#   SKIP_BUILD=1 (reuse images already built), WAIT_TIMEOUT (RayService Ready; 20m).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dry_run="${DRY_RUN:-0}"
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "kind-demo.sh: error: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

cluster="${CLUSTER:-marcelle-torch}"
namespace="${NAMESPACE:-marcelle-torch}"
operator_namespace="${OPERATOR_NAMESPACE:-kuberay-system}"
release="${RELEASE:-marcelle-torch}"
tag="${IMAGE_TAG:-0.1.0}"
registry="${REGISTRY:-marcelle-torch}"
context="kind-$cluster"
weights_image="$registry/weights:$tag"

# Pinned add-on versions (KUBERAY_OPERATOR_CHART_VERSION, KUBERAY_HELM_REPO, ...).
# shellcheck source=../operator-config/versions.env
source "$repo/operator-config/versions.env"

# Our pinned helm/kubectl first (tests/chart/install-tools.sh, `make k8s-tools`), then PATH.
tool() {
  local pinned="$repo/.cache/k8s-tools/bin/$1"
  if [[ -x "$pinned" ]]; then echo "$pinned"; else command -v "$1" || echo "$1"; fi
}
helm="$(tool helm)"
kubectl="$(tool kubectl)"

run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  [[ "$dry_run" == 1 ]] || "$@"
}
step() { printf '\n== %s\n' "$*"; }
fail() { echo "kind-demo.sh: error: $*" >&2; exit 1; }

if [[ "$dry_run" != 1 ]]; then
  for t in docker kind "$helm" "$kubectl"; do
    command -v "$t" >/dev/null 2>&1 || fail "$(basename "$t") not found (kind: https://kind.sigs.k8s.io; helm/kubectl: make k8s-tools)"
  done
  docker info >/dev/null 2>&1 || fail "the Docker daemon is not answering (is Docker running?)"
fi

step "kind cluster $cluster"
if [[ "$dry_run" != 1 ]] && kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  echo "cluster $cluster exists: reusing it"
else
  run kind create cluster --name "$cluster" --config "$repo/k8s/kind-config.yaml" --wait 5m
fi

# component -> Dockerfile; the weights image is build-only (never loaded into the cluster).
components=(ray worker backend webapp)
declare -A dockerfiles=([ray]=services/ray/Dockerfile [worker]=services/worker/Dockerfile
                        [backend]=services/backend/Dockerfile [webapp]=services/frontend/Dockerfile)
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  step "CPU images (tag $tag)"
  run docker build -f "$repo/services/weights/Dockerfile" -t "$weights_image" "$repo"
  for c in "${components[@]}"; do
    args=()
    [[ "$c" == backend ]] || args=(--build-arg "WEIGHTS_IMAGE=$weights_image")
    run docker build -f "$repo/${dockerfiles[$c]}" "${args[@]}" -t "$registry/$c:$tag" "$repo"
  done
fi
step "load the images into the kind nodes"
sets=()
for c in "${components[@]}"; do
  run kind load docker-image "$registry/$c:$tag" --name "$cluster"
  sets+=(--set "$c.image.repository=$registry/$c" --set "$c.image.tag=$tag")
done

step "KubeRay operator $KUBERAY_OPERATOR_CHART_VERSION"
# The operator image comes from quay.io: allow for the pull on a fresh cluster.
run "$helm" upgrade --install kuberay-operator kuberay-operator --kube-context "$context" \
  --repo "$KUBERAY_HELM_REPO" --version "$KUBERAY_OPERATOR_CHART_VERSION" \
  --namespace "$operator_namespace" --create-namespace \
  -f "$repo/operator-config/kuberay-operator-values.yaml" --wait --timeout 10m
# The chart's NetworkPolicy admits the operator's Pods to the Ray head from this namespace only.
sets+=(--set "networkPolicy.kuberayOperator.namespace=$operator_namespace")

step "chart marcelle-torch (release $release, namespace $namespace)"
# --wait covers the Deployments; the RayService is waited for below (KubeRay reports it).
run "$helm" upgrade --install "$release" "$repo/charts/marcelle-torch" --kube-context "$context" \
  --namespace "$namespace" --create-namespace -f "$repo/tests/e2e/kind-values.yaml" "${sets[@]}" \
  --wait --timeout 15m

# The chart names objects <release>-marcelle-torch unless the release name contains it.
fullname="$release"
[[ "$release" == *marcelle-torch* ]] || fullname="$release-marcelle-torch"
fullname="${fullname:0:40}"
fullname="${fullname%-}"

step "waiting for the model server"
# Images are already on the node: a Ray head, one CPU worker and the Serve deploy take minutes on
# a laptop; 20m leaves room for a loaded machine.
run "$kubectl" --context "$context" -n "$namespace" wait "rayservice/$fullname" \
  --for=condition=Ready --timeout="${WAIT_TIMEOUT:-20m}"

step "how to use it (the chart's NOTES: logging in, the dashboard)"
echo "kubectl commands below use the current context; kind set it to $context when it created the cluster"
echo "(else: kubectl config use-context $context)."
run "$helm" get notes "$release" --kube-context "$context" --namespace "$namespace"

step "port-forward (k8s/demo.sh $namespace $release)"
export DRY_RUN="$dry_run" KUBE_CONTEXT="$context" WAIT_TIMEOUT="${WAIT_TIMEOUT:-20m}" PORT="${PORT:-8080}"
exec "$repo/k8s/demo.sh" "$namespace" "$release"
