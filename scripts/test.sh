#!/usr/bin/env bash
# The test suite.
#
#   scripts/test.sh          every test, against the embedded (in-process) broker
#   scripts/test.sh --real   the same tests against a real broker: tansu, started (and
#                            installed, the first time) by scripts/broker.sh, or the broker
#                            that KQ_TEST_BROKERS already names
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --real ]]; then
  if [[ -z ${KQ_TEST_BROKERS:-} ]]; then
    KQ_TEST_BROKERS=$(scripts/broker.sh up memory)
    trap 'scripts/broker.sh down memory' EXIT
  fi
  export KQ_TEST_BROKERS
  echo "testing against the broker at $KQ_TEST_BROKERS"
fi

# Every feature on, so that the optional integrations (OpenTelemetry) are tested too.
cargo nextest run --workspace --all-features --no-fail-fast
# nextest does not run doc tests.
cargo test --workspace --all-features --doc
