#!/usr/bin/env bash
# A real Kafka-compatible broker (tansu) on a free 127.0.0.1 port, for tests, CI and benchmarks.
#
#   scripts/broker.sh up [memory|sqlite]    start (or reuse) it; prints host:port
#   scripts/broker.sh down [memory|sqlite]  stop it by its process id
#   scripts/broker.sh addr [memory|sqlite]  print host:port of the running one
#
# memory (the default) keeps topics in memory: fast, gone on restart. sqlite keeps them in
# .broker/sqlite/tansu.db, so a restarted broker has its data back (and is much slower).
# Installs tansu with cargo the first time (a few minutes; cached in ~/.cargo/bin after).
set -euo pipefail

TANSU_VERSION=0.6.0
root=$(cd "$(dirname "$0")/.." && pwd)
command=${1:-up}
kind=${2:-memory}
case "$kind" in memory | sqlite) ;; *) echo "unknown storage '$kind': memory or sqlite" >&2; exit 2 ;; esac
state="$root/.broker/$kind"
mkdir -p "$state"

running() {
  [[ -f "$state/pid" ]] && kill -0 "$(cat "$state/pid")" 2>/dev/null
}

install_tansu() {
  if ! command -v tansu >/dev/null 2>&1; then
    echo "installing tansu $TANSU_VERSION (a few minutes, once)" >&2
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql >&2
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

answers() {
  timeout 5 tansu topic list --broker "tcp://$1" >/dev/null 2>&1
}

up() {
  if running; then
    cat "$state/addr"
    return
  fi
  install_tansu
  local port addr storage
  port=$(free_port)
  addr="127.0.0.1:$port"
  if [[ $kind == memory ]]; then storage="memory://tansu/"; else storage="sqlite://./tansu.db"; fi
  # tansu resolves the sqlite path against its working directory: start it in its state dir.
  (cd "$state" && exec setsid tansu broker \
    --listener-url "tcp://$addr" \
    --advertised-listener-url "tcp://$addr" \
    --storage-engine "$storage" >"$state/log" 2>&1 </dev/null) &
  echo $! >"$state/pid"
  echo "$addr" >"$state/addr"
  for _ in $(seq 1 150); do
    if answers "$addr"; then
      echo "$addr"
      return
    fi
    if ! running; then break; fi
    sleep 0.2
  done
  echo "tansu did not start; its log:" >&2
  cat "$state/log" >&2 || true
  down >/dev/null
  exit 1
}

down() {
  if running; then
    local pid
    pid=$(cat "$state/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$state/pid" "$state/addr"
}

case "$command" in
  up) up ;;
  down) down ;;
  addr) running && cat "$state/addr" || { echo "no $kind broker running" >&2; exit 1; } ;;
  *) echo "usage: $0 up|down|addr [memory|sqlite]" >&2; exit 2 ;;
esac
