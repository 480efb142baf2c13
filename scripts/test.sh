#!/usr/bin/env bash
# The test suite.
#
#   scripts/test.sh          every test, against the embedded (in-process) broker
#   scripts/test.sh --real   the same tests against a real broker: tansu, started (and
#                            installed, the first time) by scripts/broker.sh, or the broker
#                            that KQ_TEST_BROKERS already names; and the TLS and SASL tests
#                            against the secured brokers of `scripts/broker.sh up tls|sasl|plain`
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --real ]]; then
  started=()
  trap 'for kind in "${started[@]}"; do scripts/broker.sh down "$kind"; done' EXIT
  if [[ -z ${KQ_TEST_BROKERS:-} ]]; then
    KQ_TEST_BROKERS=$(scripts/broker.sh up memory)
    started+=(memory)
  fi
  # The secured brokers of tests/security.rs: mutual TLS, SCRAM and PLAIN.
  if [[ -z ${KQ_TEST_TLS_BROKERS:-} ]]; then
    KQ_TEST_TLS_BROKERS=$(scripts/broker.sh up tls)
    KQ_TEST_TLS_DIR="$PWD/.broker/tls"
    started+=(tls)
  fi
  if [[ -z ${KQ_TEST_SASL_BROKERS:-} ]]; then
    KQ_TEST_SASL_BROKERS=$(scripts/broker.sh up sasl)
    started+=(sasl)
  fi
  if [[ -z ${KQ_TEST_PLAIN_BROKERS:-} ]]; then
    KQ_TEST_PLAIN_BROKERS=$(scripts/broker.sh up plain)
    started+=(plain)
  fi
  export KQ_TEST_BROKERS KQ_TEST_TLS_BROKERS KQ_TEST_TLS_DIR KQ_TEST_SASL_BROKERS \
    KQ_TEST_PLAIN_BROKERS
  echo "testing against the broker at $KQ_TEST_BROKERS (TLS at $KQ_TEST_TLS_BROKERS," \
    "SCRAM at $KQ_TEST_SASL_BROKERS, PLAIN at $KQ_TEST_PLAIN_BROKERS)"
fi

# Every feature on, so that the optional integrations (OpenTelemetry) are tested too.
cargo nextest run --workspace --all-features --no-fail-fast
# nextest does not run doc tests.
cargo test --workspace --all-features --doc
