#!/usr/bin/env bash
# A real Kafka-compatible broker (tansu) on a free 127.0.0.1 port, for tests, CI and benchmarks.
#
#   scripts/broker.sh up [KIND]    start (or reuse) it; prints host:port
#   scripts/broker.sh down [KIND]  stop it by its process id
#   scripts/broker.sh addr [KIND]  print host:port of the running one
#
# KIND:
#   memory  (the default) topics in memory: fast, gone on restart
#   sqlite  topics in .broker/sqlite/tansu.db, so a restarted broker has its data back (slower)
#   sasl    SASL required (tansu --authentication). SCRAM users kq-scram-256 (password
#           kq-secret-256, SCRAM-SHA-256) and kq-scram-512 (kq-secret-512, SCRAM-SHA-512) and
#           the topic kq-secure (8 partitions) are created before authentication is turned on.
#   plain   SASL PLAIN required (user kq-plain, password kq-secret-plain), checked by
#           scripts/sasl-plain.py in front of tansu, which has no PLAIN. Topic kq-secure.
#   tls     mutual TLS: a TLS listener (socat) in front of tansu that presents a certificate for
#           127.0.0.1 signed by .broker/tls/ca.pem and asks for a client certificate signed by
#           the same CA (client.pem, client.key). other-ca.pem signed nothing. Topic kq-secure.
# Installs tansu with cargo the first time (a few minutes; cached in ~/.cargo/bin after).
set -euo pipefail

TANSU_VERSION=0.6.0
root=$(cd "$(dirname "$0")/.." && pwd)
command=${1:-up}
kind=${2:-memory}
case "$kind" in
  memory | sqlite | sasl | plain | tls) ;;
  *) echo "unknown kind '$kind': memory, sqlite, sasl, plain or tls" >&2; exit 2 ;;
esac
state="$root/.broker/$kind"
mkdir -p "$state"

# Every process of a broker (tansu, and the TLS or PLAIN listener) has its pid on a line of $state/pids.
running() {
  [[ -f "$state/pids" ]] || return 1
  local pid
  while read -r pid; do kill -0 "$pid" 2>/dev/null || return 1; done <"$state/pids"
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

# start_tansu LISTEN ADVERTISED STORAGE [ARGS...]: starts tansu in the state dir (it resolves a
# sqlite path against its working directory) and records its pid.
start_tansu() {
  local listen=$1 advertised=$2 storage=$3
  shift 3
  (cd "$state" && exec setsid tansu broker \
    --listener-url "tcp://$listen" \
    --advertised-listener-url "tcp://$advertised" \
    --storage-engine "$storage" "$@" >>"$state/log" 2>&1 </dev/null) &
  echo $! >>"$state/pids"
}

# wait_until CHECK...: retries the check for up to 30 s while the broker runs.
wait_until() {
  for _ in $(seq 1 150); do
    if "$@"; then return 0; fi
    running || break
    sleep 0.2
  done
  echo "the $kind broker did not start; its log:" >&2
  cat "$state/log" >&2 || true
  down
  exit 1
}

# The TLS files: a CA, a server certificate for 127.0.0.1 and a client certificate it signed,
# and a second CA that signed nothing. Made once, kept for ten years.
make_certificates() {
  [[ -f "$state/client.pem" ]] && return
  command -v openssl >/dev/null || { echo "openssl is needed for the tls broker" >&2; exit 1; }
  (
    cd "$state"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kq test CA" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kq other CA" \
      -keyout other-ca.key -out other-ca.pem 2>/dev/null
    for who in server client; do
      openssl req -newkey rsa:2048 -nodes -subj "/CN=kq $who" -keyout "$who.key" \
        -out "$who.csr" 2>/dev/null
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$who.ext"
      openssl x509 -req -days 3650 -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -extfile "$who.ext" -out "$who.pem" 2>/dev/null
    done
  )
}

up() {
  if running; then
    cat "$state/addr"
    return
  fi
  down
  install_tansu
  : >"$state/log"
  local addr="127.0.0.1:$(free_port)"
  case "$kind" in
    memory)
      start_tansu "$addr" "$addr" memory://tansu/
      wait_until answers "$addr"
      ;;
    sqlite)
      start_tansu "$addr" "$addr" sqlite://./tansu.db
      wait_until answers "$addr"
      ;;
    sasl)
      # tansu's own client has no SASL: users and topic are made before authentication is on,
      # in sqlite storage so that they survive the restart.
      rm -f "$state"/tansu.db*
      start_tansu "$addr" "$addr" sqlite://./tansu.db
      wait_until answers "$addr"
      tansu user create kq-scram-256 kq-secret-256 --mechanism scram256 --broker "tcp://$addr" >&2
      tansu user create kq-scram-512 kq-secret-512 --mechanism scram512 --broker "tcp://$addr" >&2
      tansu topic create kq-secure --partitions 8 --broker "tcp://$addr" >&2
      down
      start_tansu "$addr" "$addr" sqlite://./tansu.db --authentication
      wait_until listening "$addr"
      ;;
    plain)
      # tansu tells clients to come back through the PLAIN listener; only it reaches tansu.
      local inner="127.0.0.1:$(free_port)"
      start_tansu "$inner" "$addr" memory://tansu/
      wait_until answers "$inner"
      tansu topic create kq-secure --partitions 8 --broker "tcp://$inner" >&2
      (exec setsid python3 "$root/scripts/sasl-plain.py" "${addr##*:}" "$inner" \
        kq-plain kq-secret-plain >>"$state/log" 2>&1 </dev/null) &
      echo $! >>"$state/pids"
      wait_until listening "$addr"
      ;;
    tls)
      command -v socat >/dev/null || { echo "socat is needed for the tls broker" >&2; exit 1; }
      make_certificates
      # tansu tells clients to come back through the TLS listener; only it reaches tansu.
      local inner="127.0.0.1:$(free_port)"
      start_tansu "$inner" "$addr" memory://tansu/
      wait_until answers "$inner"
      tansu topic create kq-secure --partitions 8 --broker "tcp://$inner" >&2
      (cd "$state" && exec setsid socat \
        "OPENSSL-LISTEN:${addr##*:},bind=127.0.0.1,reuseaddr,fork,cert=server.pem,key=server.key,cafile=ca.pem,verify=1" \
        "TCP:$inner" >>"$state/log" 2>&1 </dev/null) &
      echo $! >>"$state/pids"
      wait_until listening "$addr"
      ;;
  esac
  echo "$addr" >"$state/addr"
  echo "$addr"
}

# listening ADDR: something accepts connections at ADDR.
listening() {
  timeout 1 bash -c "exec 3<>/dev/tcp/${1%:*}/${1##*:}" 2>/dev/null
}

down() {
  if [[ -f "$state/pids" ]]; then
    local pid
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$state/pids"
    while read -r pid; do
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    done <"$state/pids"
  fi
  rm -f "$state/pids" "$state/addr"
}

case "$command" in
  up) up ;;
  down) down ;;
  addr) running && cat "$state/addr" || { echo "no $kind broker running" >&2; exit 1; } ;;
  *) echo "usage: $0 up|down|addr [memory|sqlite|sasl|plain|tls]" >&2; exit 2 ;;
esac
