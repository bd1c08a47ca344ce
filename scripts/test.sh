#!/usr/bin/env bash
# The test command: sets up what a fresh machine lacks, then format, lint and the whole test
# suite against the real models and photos. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# shellcheck disable=SC1091
source .cache/env.sh
bash scripts/check-deploy.sh   # deployment files: cfn-lint, CLI shapes, compose, hadolint

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The detection worker's tests run the grouping worker binary too: `cargo test --workspace`
# builds it in the same invocation (for the grouping worker's own tests), so it is fresh.
cargo test --workspace --locked
