#!/usr/bin/env bash
# Runs the whole local pipeline on the sample photos (fetching models and photos if missing)
# and writes faces, groups and an HTML report to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# shellcheck disable=SC1091
source .cache/env.sh

cargo build --release --locked -p facegroup
target/release/facegroup run testdata/images --out out/demo "$@"
echo "report: file://$PWD/out/demo/report.html"
