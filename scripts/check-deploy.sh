#!/usr/bin/env bash
# Static checks of what cannot run here (no container engine): docker-compose.yml through
# docker-compose's own parser, the Kubernetes manifests against the Kubernetes schemas (offline).
# The bridge configs under deploy/ are validated by the Rust tests (check-config's code).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker-compose >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
if ! python3 -c "import kubernetes_validate" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi

echo "== docker-compose config"
TCB_WEBHOOK_PASSWORD=x docker-compose -f docker-compose.yml config --quiet
TCB_WEBHOOK_PASSWORD=x docker-compose -f docker-compose.yml --profile rabbitmq config --services >/dev/null

echo "== kubernetes-validate --strict"
for f in deploy/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] && continue
  python3 -m kubernetes_validate --strict --kubernetes-version 1.33 "$f"
done
