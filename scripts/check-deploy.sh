#!/usr/bin/env bash
# Static checks of what cannot run here (no container engine): docker-compose.yml through
# docker-compose's own parser, the Kubernetes manifests against the Kubernetes schemas (offline).
# The bridge configs under deploy/ are validated by the Rust tests (check-config's code).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install.sh

echo "== docker-compose config"
TCB_WEBHOOK_PASSWORD=x docker-compose -f docker-compose.yml config --quiet
TCB_WEBHOOK_PASSWORD=x docker-compose -f docker-compose.yml --profile rabbitmq config --services >/dev/null

echo "== kubernetes-validate --strict"
for f in deploy/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] && continue
  python3 -m kubernetes_validate --strict --kubernetes-version 1.33 "$f"
done
