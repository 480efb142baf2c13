#!/usr/bin/env bash
# The test suite.
#
#   scripts/test.sh          every test, against the embedded (in-process) broker
#   scripts/test.sh --real   the same tests against a real Apache Kafka broker, started (and
#                            fetched, the first time) by scripts/broker.sh, or the broker that
#                            KQ_TEST_BROKERS already names; the TLS and SASL tests run against
#                            the same broker's mutual-TLS and SASL listeners
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --real ]]; then
  if [[ -z ${KQ_TEST_BROKERS:-} ]]; then
    trap 'scripts/broker.sh down' EXIT
    KQ_TEST_BROKERS=$(scripts/broker.sh up)
    # The secured listeners of tests/security.rs: mutual TLS, and SASL (SCRAM and PLAIN).
    KQ_TEST_TLS_BROKERS=$(scripts/broker.sh addr kafka tls)
    KQ_TEST_TLS_DIR="$PWD/.broker/kafka/tls"
    KQ_TEST_SASL_BROKERS=$(scripts/broker.sh addr kafka sasl)
    KQ_TEST_PLAIN_BROKERS=$KQ_TEST_SASL_BROKERS
  fi
  export KQ_TEST_BROKERS KQ_TEST_TLS_BROKERS KQ_TEST_TLS_DIR KQ_TEST_SASL_BROKERS \
    KQ_TEST_PLAIN_BROKERS
  echo "testing against the broker at $KQ_TEST_BROKERS (TLS at ${KQ_TEST_TLS_BROKERS:-none}," \
    "SASL at ${KQ_TEST_SASL_BROKERS:-none})"
fi

# Every feature on, so that the optional integrations (OpenTelemetry) are tested too.
cargo nextest run --workspace --all-features --no-fail-fast
# nextest does not run doc tests.
cargo test --workspace --all-features --doc
