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
