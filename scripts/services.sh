#!/usr/bin/env bash
# Starts the brokers the integration tests need, installing them when missing. Idempotent: what
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

apt_updated=0
apt_install() {
  if ((apt_updated == 0)); then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# RabbitMQ on 127.0.0.1:5672 (guest/guest).
if ! port_open 5672; then
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "services: installing rabbitmq-server"
    apt_install rabbitmq-server
  fi
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached || true
  rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || true
  wait_port 5672 120 RabbitMQ
fi
echo "services: RabbitMQ is up on 127.0.0.1:5672"

# A Kafka-protocol broker on 127.0.0.1:9092: tansu (crates.io), since no JVM Kafka can be had here.
# The first install compiles for about 15 minutes; later runs find it on PATH.
export PATH="$HOME/.cargo/bin:$PATH"
if ! port_open 9092; then
  if ! command -v tansu >/dev/null 2>&1; then
    echo "services: installing tansu 0.6.0 (cargo install, about 15 minutes the first time)"
    cargo install tansu --version 0.6.0 --locked --features dynostore,libsql
  fi
  echo "services: starting tansu"
  data="${TMPDIR:-/tmp}/tradecloud-bridge-tansu"
  mkdir -p "$data"
  (cd "$data" && nohup tansu broker \
    --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$data/tansu.log" 2>&1 &)
  wait_port 9092 30 tansu
fi
echo "services: Kafka protocol (tansu) is up on 127.0.0.1:9092"
