#!/usr/bin/env bash
# Starts the brokers the integration tests need (install.sh installs them). Idempotent: what
# already runs is left alone. A broker that cannot be started is a failure (exit 1), never a skip.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  local deadline=$((SECONDS + $2))
  until port_open "$1"; do
    if ((SECONDS > deadline)); then
      echo "services: $3 did not open port $1 within $2 s" >&2
      return 1
    fi
    sleep 0.2
  done
}

"$(dirname "$0")/install.sh"

# RabbitMQ on 127.0.0.1:5672 (guest/guest).
if ! port_open 5672; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached || true
  rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || true
  wait_port 5672 120 RabbitMQ
fi
echo "services: RabbitMQ is up on 127.0.0.1:5672"

# A Kafka-protocol broker on 127.0.0.1:9092: tansu (crates.io), since no JVM Kafka can be had here.
export PATH="$HOME/.cargo/bin:$PATH"
if ! port_open 9092; then
  echo "services: starting tansu"
  data="${TMPDIR:-/tmp}/tradecloud-bridge-tansu"
  mkdir -p "$data"
  # exec: no shell stays behind holding this script's stdout (a pipe's reader would wait on it).
  (cd "$data" && exec nohup tansu broker \
    --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/) >"$data/tansu.log" 2>&1 </dev/null &
  wait_port 9092 30 tansu
fi
echo "services: Kafka protocol (tansu) is up on 127.0.0.1:9092"

# The host names deploy/ gives the brokers and services, on this machine: tests/deploy.py runs the
# bridge with exactly the configs docker-compose.yml and the Kubernetes overlays give it.
names="kafka rabbitmq simulator ingress ingress-rabbitmq kafka-kafka-bootstrap.kafka rabbitmq.rabbitmq"
missing_names=""
for name in $names; do
  getent hosts "$name" | grep -q '^127\.0\.0\.1 ' || missing_names="$missing_names $name"
done
if [ -n "$missing_names" ]; then
  echo "services: adding to /etc/hosts as 127.0.0.1:$missing_names"
  echo "127.0.0.1$missing_names # tradecloud-bridge tests/deploy.py" >> /etc/hosts
fi
