#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, lints, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== services"
scripts/services.sh
scripts/check-deploy.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# The bridge as docker-compose.yml and the Kubernetes overlays run it (their configs, commands,
# environments and mounted files), against the brokers started above.
echo "== deploy/ as deployed"
python3 tests/deploy.py target/debug/tradecloud-bridge 2>&1 | tee -a "$log" || status=$?
# The AsyncAPI document, and the messages the end-to-end tests saw on every channel, checked with
# AsyncAPI's own parser.
echo "== AsyncAPI"
NODE_PATH=/opt/tcb-node/node_modules node tests/asyncapi_check.cjs docs/asyncapi.yaml target/asyncapi-examples \
  2>&1 | tee -a "$log" || status=$?
# The operator console in headless Chromium (Playwright) and Firefox ESR (Selenium, geckodriver),
# against development mode.
echo "== console in a browser"
python3 tests/console.py target/debug/tradecloud-bridge 2>&1 | tee -a "$log" || status=$?
# Each backend is a cargo feature: the binary builds with each alone, and with only the embedded
# backend its own tests (unit and end to end) pass.
echo "== one backend at a time"
for feature in kafka rabbitmq; do
  cargo check -p tradecloud-bridge --locked --no-default-features --features "$feature" --all-targets \
    || status=$?
done
cargo test -p tradecloud-bridge --locked --no-default-features --features embedded 2>&1 \
  | tee -a "$log" || status=$?
# One closing line over all test binaries (cargo's last line is that of the last binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' \
  "${log}"
exit "$status"
