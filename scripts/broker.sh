#!/usr/bin/env bash
# A real Apache Kafka broker (4.x, KRaft mode, one node) on free 127.0.0.1 ports, for tests,
# CI and benchmarks.
#
#   scripts/broker.sh up [NAME]                start (or reuse) it; prints the plaintext host:port
#   scripts/broker.sh addr [NAME] [LISTENER]   print a listener's host:port
#   scripts/broker.sh down [NAME]              stop it by its process id; its data stays
#   scripts/broker.sh wipe [NAME]              stop it and delete its data
#
# NAME (default `kafka`) is the instance: each has its state (data, log, certificates, ports)
# in .broker/NAME, so a test that restarts its own broker leaves the shared one alone. A
# stopped instance started again has its topics, records and committed offsets back.
# KQ_BROKER_DATA, when set as an instance is first started, puts its data (the log segments)
# there instead, such as on a tmpfs; KQ_BROKER_HEAP sets the broker's heap (default 1g).
#
# Every instance serves three listeners (LISTENER for `addr`):
#   plain  no security (the default)
#   tls    mutual TLS: a certificate for 127.0.0.1 signed by .broker/NAME/tls/ca.pem, and a
#          client certificate signed by the same CA required (client.pem, client.key);
#          other-ca.pem signed nothing
#   sasl   SASL without TLS: PLAIN (user kq-plain, password kq-secret-plain), SCRAM-SHA-256
#          (kq-scram-256, kq-secret-256) and SCRAM-SHA-512 (kq-scram-512, kq-secret-512)
# and has the topic kq-secure (8 partitions) for the secured listeners' tests.
#
# The broker's jars come from Maven Central through scripts/kafka/pom.xml (Java 17 and Maven;
# about 45 MB, resolved once into ~/.m2). Settings are for tests: one replica everywhere, a
# group's first rebalance not delayed, a small heap.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
command=${1:-up}
name=${2:-kafka}
[[ $name =~ ^[A-Za-z0-9_-]+$ ]] || { echo "bad broker name '$name'" >&2; exit 2; }
state="$root/.broker/$name"
data_link="$state/data"
pom="$root/scripts/kafka/pom.xml"
heap=${KQ_BROKER_HEAP:-1g}

running() {
  [[ -f "$state/pid" ]] && kill -0 "$(cat "$state/pid")" 2>/dev/null
}

# The broker's classpath, in ~/.m2: resolved by Maven the first time, and again whenever the
# pom changed or a jar went missing.
classpath() {
  local file="$root/.broker/classpath"
  if [[ ! -s $file || $pom -nt $file ]] || ! all_present "$file"; then
    command -v mvn >/dev/null || { echo "Maven (mvn) is needed to fetch Kafka" >&2; exit 1; }
    command -v java >/dev/null || { echo "Java 17 or later is needed to run Kafka" >&2; exit 1; }
    mkdir -p "$root/.broker"
    echo "resolving Apache Kafka's jars with Maven (once)" >&2
    mvn -q -B -Dstyle.color=never -f "$pom" dependency:build-classpath -Dmdep.outputFile="$file.new" >&2
    mv "$file.new" "$file"
  fi
  cat "$file"
}

all_present() {
  local jar
  while read -r -d: jar || [[ -n $jar ]]; do
    [[ -f $jar ]] || return 1
  done <"$1"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# listening PORT: something accepts connections on 127.0.0.1:PORT.
listening() {
  timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# A port of this instance: the one it had, so that a restarted broker keeps its addresses,
# unless something else took it meanwhile.
port() {
  local file="$state/ports/$1"
  if [[ -f $file ]] && ! listening "$(cat "$file")"; then
    cat "$file"
  else
    free_port | tee "$file"
  fi
}

# The TLS files: a CA, a server certificate for 127.0.0.1 and a client certificate it signed,
# and a second CA that signed nothing. Made once, kept for ten years.
make_certificates() {
  local dir="$state/tls"
  [[ -f "$dir/client.pem" ]] && return
  command -v openssl >/dev/null || { echo "openssl is needed for the TLS listener" >&2; exit 1; }
  mkdir -p "$dir"
  (
    cd "$dir"
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
    # Kafka reads its own key and certificate from one PEM file (an unencrypted PKCS#8 key).
    openssl pkcs8 -topk8 -nocrypt -in server.key >server-keystore.pem
    cat server.pem >>server-keystore.pem
  )
}

write_properties() {
  local plain=$1 tls=$2 sasl=$3 controller=$4
  cat >"$state/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listeners=PLAINTEXT://127.0.0.1:$plain,SSL://127.0.0.1:$tls,SASL_PLAINTEXT://127.0.0.1:$sasl,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$plain,SSL://127.0.0.1:$tls,SASL_PLAINTEXT://127.0.0.1:$sasl
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data_link

# One node: one replica of everything, and the internal topics small.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests form groups all the time: the first rebalance starts at once.
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4

listener.name.ssl.ssl.client.auth=required
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location=$state/tls/server-keystore.pem
listener.name.ssl.ssl.truststore.type=PEM
listener.name.ssl.ssl.truststore.location=$state/tls/ca.pem

sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_kq-plain="kq-secret-plain";
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
}

java_opts() {
  echo "-Xms256m -Xmx$heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true" \
    "-Dkafka.logs.dir=$state -Dlog4j2.configurationFile=$root/scripts/kafka/log4j2.properties"
}

up() {
  if running; then
    cat "$state/addr"
    return
  fi
  down
  local cp
  cp=$(classpath)
  mkdir -p "$state/ports"
  make_certificates
  local plain tls sasl controller
  plain=$(port plain)
  tls=$(port tls)
  sasl=$(port sasl)
  controller=$(port controller)
  write_properties "$plain" "$tls" "$sasl" "$controller"
  if [[ -L $data_link ]]; then
    # Data elsewhere that went away (a tmpfs after a reboot) starts again empty.
    mkdir -p "$(readlink "$data_link")"
  elif [[ ! -e $data_link && -n ${KQ_BROKER_DATA:-} ]]; then
    mkdir -p "$KQ_BROKER_DATA"
    ln -s "$KQ_BROKER_DATA" "$data_link"
  fi
  # shellcheck disable=SC2046
  if [[ ! -f "$data_link/meta.properties" ]]; then
    # Storage is formatted once; SCRAM users are written into the cluster's metadata with it.
    java $(java_opts) -cp "$cp" kafka.tools.StorageTool format \
      --config "$state/server.properties" \
      --cluster-id "$(java -cp "$cp" kafka.tools.StorageTool random-uuid)" \
      --add-scram 'SCRAM-SHA-256=[name=kq-scram-256,password=kq-secret-256]' \
      --add-scram 'SCRAM-SHA-512=[name=kq-scram-512,password=kq-secret-512]' \
      >>"$state/format.log" 2>&1 || { cat "$state/format.log" >&2; exit 1; }
  fi
  # shellcheck disable=SC2046
  (exec setsid java $(java_opts) -cp "$cp" kafka.Kafka "$state/server.properties" \
    >>"$state/stdout.log" 2>&1 </dev/null) &
  echo $! >"$state/pid"
  # Up once every listener accepts and the topic for the secured listeners exists.
  local ready=
  for _ in $(seq 1 300); do
    running || break
    if listening "$plain" && listening "$tls" && listening "$sasl" &&
      java -cp "$cp" org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$plain" \
        --create --if-not-exists --topic kq-secure --partitions 8 >>"$state/stdout.log" 2>&1; then
      ready=1
      break
    fi
    sleep 0.2
  done
  if [[ -z $ready ]]; then
    echo "the Kafka broker '$name' did not start; its log:" >&2
    tail -n 40 "$state/server.log" "$state/stdout.log" >&2 2>/dev/null || true
    down
    exit 1
  fi
  echo "127.0.0.1:$plain" >"$state/addr"
  echo "127.0.0.1:$plain"
}

down() {
  if [[ -f "$state/pid" ]]; then
    local pid
    pid=$(cat "$state/pid")
    # SIGTERM: Kafka shuts down cleanly, so that a restart need not recover its logs.
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$state/pid" "$state/addr"
}

addr() {
  running || { echo "no broker '$name' running" >&2; exit 1; }
  case "${1:-plain}" in
    plain | tls | sasl) echo "127.0.0.1:$(cat "$state/ports/${1:-plain}")" ;;
    *) echo "unknown listener '$1': plain, tls or sasl" >&2; exit 2 ;;
  esac
}

case "$command" in
  up) up ;;
  down) down ;;
  wipe)
    down
    # Data elsewhere (KQ_BROKER_DATA) goes with the instance.
    [[ -L $data_link ]] && rm -rf "$(readlink "$data_link")"
    rm -rf "$state"
    ;;
  addr) addr "${3:-plain}" ;;
  *) echo "usage: $0 up|addr|down|wipe [NAME] [plain|tls|sasl]" >&2; exit 2 ;;
esac
