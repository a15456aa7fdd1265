#!/usr/bin/env bash
# Setup of the head node only (deploy/cluster.yaml's head_setup_commands; the rehearsal runs it
# too): Prometheus, Grafana and Redis, and Redis's password. Each step skips what is there.
# Their packaged services would listen on every interface (and Redis on 6379, the GCS's port):
# they stay off; the head's start commands run them on 127.0.0.1.
#
#   ACCORD_SETUP_SKIP   space-separated steps not to run here (e.g. "grafana" where no Grafana
#                       is wanted); each skip is said, never silent.
set -euo pipefail
SKIP=" ${ACCORD_SETUP_SKIP:-} "
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

skipped() { case "$SKIP" in *" $1 "*) echo "$1: skipped (ACCORD_SETUP_SKIP)"; return 0;; esac; return 1; }

apt_install() {  # apt_install PACKAGE SERVICE
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$1"
  $SUDO systemctl disable --now "$2" 2>/dev/null || true
}

if ! skipped prometheus; then
  if command -v prometheus >/dev/null; then echo "prometheus: installed"; else apt_install prometheus prometheus; fi
fi

if ! skipped grafana; then
  if command -v grafana >/dev/null; then
    echo "grafana: installed"
  else  # from Grafana's own apt repository
    $SUDO mkdir -p /etc/apt/keyrings
    curl -fsSL https://apt.grafana.com/gpg.key | $SUDO gpg --dearmor --yes -o /etc/apt/keyrings/grafana.gpg
    echo "deb [signed-by=/etc/apt/keyrings/grafana.gpg] https://apt.grafana.com stable main" |
      $SUDO tee /etc/apt/sources.list.d/grafana.list >/dev/null
    apt_install grafana grafana-server
  fi
fi

# Redis for `replay.backend: redis` (the durable SAC replay).
if ! skipped redis; then
  if command -v redis-server >/dev/null; then echo "redis-server: installed"; else apt_install redis-server redis-server; fi
  # Its password: generated once, mode 600, never on a command line.
  if [ ! -s ~/.accord/redis.password ]; then
    mkdir -p -m 700 ~/.accord
    (umask 077 && head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > ~/.accord/redis.password)
    echo "redis: password generated in ~/.accord/redis.password"
  fi
fi
