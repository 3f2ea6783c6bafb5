#!/usr/bin/env bash
# Static checks of what cannot run here (no container engine, no cluster): docker-compose.yml,
# the Kubernetes overlays and components, the alert rules and the image's build context
# (scripts/check_deploy.py says what each checks). tests/deploy.py runs the deployed configs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install.sh
python3 scripts/check_deploy.py
