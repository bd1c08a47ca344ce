#!/usr/bin/env bash
# Compare end-to-end throughput of facegroup and InsightFace 0.7.3 on testdata/images.
#
#   scripts/bench-vs-insightface.sh [THREADS] [REPEAT]      (defaults: 2 3)
#
# Both sides decode, detect, align and embed every face in every image, REPEAT times after one
# untimed warm-up pass, with the same test models (models/scrfd_500m_bnkps.onnx +
# models/w600k_mbf.onnx) and THREADS intra-op threads.  Prints a markdown table and the
# facegroup / insightface throughput ratios.
#
# Assumes scripts/setup.sh has been run (models, test images, .venv).  Overrides:
#   FACEGROUP=path/to/facegroup   (default target/release/facegroup; build: cargo build --release)
#   PYTHON=path/to/python         (default .venv/bin/python; gets scripts/reference/requirements.txt
#                                  installed if insightface is missing)
set -euo pipefail

THREADS="${1:-2}"
REPEAT="${2:-3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FACEGROUP="${FACEGROUP:-target/release/facegroup}"
PYTHON="${PYTHON:-.venv/bin/python}"
IMAGES=testdata/images

die() { echo "error: $*" >&2; exit 1; }
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer, got '$THREADS'"
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer, got '$REPEAT'"
[[ -x "$FACEGROUP" ]] || die "$FACEGROUP not found; run: cargo build --release"
[[ -x "$PYTHON" ]] || die "$PYTHON not found; run scripts/setup.sh (or python3 -m venv .venv)"

# Idempotent: only downloads what is missing or has the wrong sha256.
python3 scripts/fetch.py all >/dev/null || die "scripts/fetch.py all failed"

if ! "$PYTHON" -c 'import insightface' 2>/dev/null; then
    echo "installing scripts/reference/requirements.txt into $($PYTHON -c 'import sys; print(sys.prefix)')" >&2
    "$PYTHON" -m pip install --disable-pip-version-check -q -r scripts/reference/requirements.txt \
        || die "pip install of scripts/reference/requirements.txt failed"
fi

last_json() { { grep '^{' || true; } | tail -n 1; }

echo "running facegroup (threads=$THREADS, repeat=$REPEAT)..." >&2
FG_JSON="$("$FACEGROUP" bench "$IMAGES" --threads "$THREADS" --repeat "$REPEAT" --json | last_json)" \
    || die "facegroup bench failed"
[[ -n "$FG_JSON" ]] || die "facegroup bench printed no JSON line"

echo "running insightface (threads=$THREADS, repeat=$REPEAT)..." >&2
IF_JSON="$("$PYTHON" scripts/reference/bench_insightface.py --images "$IMAGES" \
    --threads "$THREADS" --repeat "$REPEAT" --warmup 1 2>/dev/null | last_json)" \
    || die "bench_insightface.py failed (rerun it by hand to see its stderr)"
[[ -n "$IF_JSON" ]] || die "bench_insightface.py printed no JSON line"

python3 - "$FG_JSON" "$IF_JSON" <<'PY'
import json, sys

rows = [json.loads(a) for a in sys.argv[1:3]]
keys = ["impl", "threads", "images", "faces", "seconds", "images_per_s", "faces_per_s", "peak_rss_mib"]
head = ["impl", "threads", "images", "faces", "seconds", "images/s", "faces/s", "peak RSS (MiB)"]
for row in rows:
    missing = [k for k in keys if k not in row]
    if missing:
        sys.exit(f"error: {row.get('impl', '?')} JSON lacks {missing}: {row}")

def cell(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)

print("| " + " | ".join(head) + " |")
print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
for row in rows:
    print("| " + " | ".join(cell(row[k]) for k in keys) + " |")

fg, ref = rows
def ratio(k):
    return f"{fg[k] / ref[k]:.2f}x" if ref[k] else "n/a"
print()
print(f"facegroup / insightface: images/s {ratio('images_per_s')}, faces/s {ratio('faces_per_s')}, "
      f"peak RSS {ratio('peak_rss_mib')}")
if fg["faces"] != ref["faces"]:
    print(f"\nnote: face counts differ (facegroup {fg['faces']}, insightface {ref['faces']}); "
          "faces/s is not like for like.")
PY
