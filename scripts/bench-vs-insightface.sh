#!/usr/bin/env bash
# Compare end-to-end throughput of facegroup with InsightFace 0.7.3 run the two ways a Python
# user would spread it over THREADS cores, on the sample photos and on a gallery-like set.
#
#   scripts/bench-vs-insightface.sh [THREADS] [REPEAT]      (defaults: 2 3)
#
# Every side decodes, detects, aligns and embeds every face in every image, with the same models
# (models/scrfd_500m_bnkps.onnx + models/w600k_mbf.onnx), after WARMUP untimed passes:
#   facegroup             `facegroup bench DIR --json --threads THREADS` (one row per variant of
#                         FACEGROUP_BENCH_ARGS)
#   insightface Px1       THREADS processes x 1 intra-op thread, images shared out between them;
#                         timed from a barrier that opens once every process has loaded its models
#                         and warmed up, to the last process finishing
#   insightface 1xT       one process x THREADS intra-op threads
# Ratios are taken against the FASTER insightface configuration (by images/s) of each set.
# Peak memory is each side's peak RSS; for the peer, summed over all of its processes.
#
# Sets (BENCH_SETS, default "samples gallery"):
#   samples   testdata/images (8 photos, 38 faces), REPEAT timed passes
#   gallery   every photo under GALLERY_DIR (default ../shared/faces/celeba-dev from the repo root),
#             flattened through symlinks in a temporary folder, GALLERY_REPEAT timed passes
#   large     the samples as 12 MP phone photos (4000x3000 or 3000x4000 by their orientation,
#             enlarged with Lanczos and encoded by libjpeg at quality 92 through Pillow),
#             GALLERY_REPEAT timed passes: per-photo time and memory on the photos phones take
#
# Environment overrides:
#   FACEGROUP=path/to/facegroup   default target/release/facegroup (cargo build --release -p facegroup)
#   PYTHON=path/to/python         default .venv/bin/python; gets scripts/reference/requirements.txt
#                                 installed if insightface is missing
#   FACEGROUP_BENCH_ARGS          extra `facegroup bench` flags; ';' separates variants, each gets
#                                 its own facegroup row, e.g.
#                                 "--det-mode exact;--det-mode fast"
#   GALLERY_DIR, GALLERY_LIMIT    gallery folder; GALLERY_LIMIT=N keeps N photos spread evenly over
#                                 the sorted list (0 or unset: all), for a quick check
#   GALLERY_REPEAT=1  WARMUP=1    timed passes over the gallery; untimed passes per set and side
#
# Needs scripts/setup.sh to have run (models, test images, .venv, .cache/env.sh).
set -euo pipefail

THREADS="${1:-2}"
REPEAT="${2:-3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FACEGROUP="${FACEGROUP:-target/release/facegroup}"
PYTHON="${PYTHON:-.venv/bin/python}"
BENCH_SETS="${BENCH_SETS:-samples gallery large}"
GALLERY_DIR="${GALLERY_DIR:-$ROOT/../shared/faces/celeba-dev}"
GALLERY_LIMIT="${GALLERY_LIMIT:-0}"
GALLERY_REPEAT="${GALLERY_REPEAT:-1}"
WARMUP="${WARMUP:-1}"

die() { echo "error: $*" >&2; exit 1; }
is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
is_count "$THREADS" || die "THREADS must be a positive integer, got '$THREADS'"
is_count "$REPEAT" || die "REPEAT must be a positive integer, got '$REPEAT'"
is_count "$GALLERY_REPEAT" || die "GALLERY_REPEAT must be a positive integer, got '$GALLERY_REPEAT'"
[[ "$GALLERY_LIMIT" =~ ^[0-9]+$ ]] || die "GALLERY_LIMIT must be a number, got '$GALLERY_LIMIT'"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a number, got '$WARMUP'"

# ORT_DYLIB_PATH (and friends) as scripts/setup.sh wrote them; a fresh shell has none of it.
[[ -f .cache/env.sh ]] || die ".cache/env.sh not found; run scripts/setup.sh"
# shellcheck source=/dev/null
source .cache/env.sh
[[ -f "${ORT_DYLIB_PATH:-}" ]] || die "ORT_DYLIB_PATH '${ORT_DYLIB_PATH:-}' is not a file; rerun scripts/setup.sh"
export ORT_DYLIB_PATH
[[ -x "$FACEGROUP" ]] || die "$FACEGROUP not found; run: cargo build --release -p facegroup"
[[ -x "$PYTHON" ]] || die "$PYTHON not found; run scripts/setup.sh (or python3 -m venv .venv)"

# Idempotent: only downloads what is missing or has the wrong sha256.
python3 scripts/fetch.py all >/dev/null || die "scripts/fetch.py all failed"

if ! "$PYTHON" -c 'import insightface' 2>/dev/null; then
    echo "installing scripts/reference/requirements.txt into $($PYTHON -c 'import sys; print(sys.prefix)')" >&2
    "$PYTHON" -m pip install --disable-pip-version-check -q -r scripts/reference/requirements.txt \
        || die "pip install of scripts/reference/requirements.txt failed"
fi

# One facegroup row per variant; no FACEGROUP_BENCH_ARGS means one row with the defaults.
VARIANTS=()
IFS=';' read -ra VARIANTS <<< "${FACEGROUP_BENCH_ARGS:-}"
[[ ${#VARIANTS[@]} -gt 0 ]] || VARIANTS=("")

WORK="$(mktemp -d "${TMPDIR:-/tmp}/bench-vs-insightface.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
RESULTS="$WORK/results.tsv"   # set <TAB> label <TAB> JSON line
: > "$RESULTS"

# Flattens every image under $1 into $2 as symlinks named DIR__FILE (evenly spaced subset of
# $3 photos if $3 > 0); prints how many it linked.
flatten() {
    python3 - "$1" "$2" "$3" <<'PY'
import os, sys
from pathlib import Path
src, dst, limit = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), int(sys.argv[3])
exts = {".jpg", ".jpeg", ".png", ".webp"}
photos = sorted(p for p in src.rglob("*") if p.suffix.lower() in exts and p.is_file())
if limit and limit < len(photos):
    photos = [photos[i * len(photos) // limit] for i in range(limit)]
dst.mkdir(parents=True)
for p in photos:
    os.symlink(p, dst / "__".join(p.relative_to(src).parts))
print(len(photos))
PY
}

# Writes each sample photo into $1 as a 12 MP JPEG (4000x3000, or 3000x4000 for a portrait),
# enlarged with Lanczos (cropped to 4:3 around the centre) and encoded by libjpeg at quality 92.
make_large() {
    "$PYTHON" - testdata/images "$1" <<'PY'
import sys
from pathlib import Path
from PIL import Image, ImageOps
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True)
for p in sorted(src.glob("*.jpg")):
    im = ImageOps.exif_transpose(Image.open(p)).convert("RGB")
    size = (4000, 3000) if im.width >= im.height else (3000, 4000)
    ImageOps.fit(im, size, Image.LANCZOS).save(dst / p.name, quality=92)
PY
}

last_json() { { grep '^{' || true; } | tail -n 1; }

# run_side SET LABEL LOG CMD... : runs CMD, keeps its last JSON line as a row of SET.
run_side() {
    local set="$1" label="$2" log="$3"; shift 3
    echo "  $label ..." >&2
    local json
    if ! json="$("$@" 2>"$log" | last_json)" || [[ -z "$json" ]]; then
        tail -n 20 "$log" >&2
        die "$label on $set failed or printed no JSON line: $*"
    fi
    printf '%s\t%s\t%s\n' "$set" "$label" "$json" >> "$RESULTS"
}

for set in $BENCH_SETS; do
    case "$set" in
        samples) dir=testdata/images; repeat="$REPEAT" ;;
        gallery)
            [[ -d "$GALLERY_DIR" ]] || die "gallery folder $GALLERY_DIR not found (set GALLERY_DIR, or BENCH_SETS=samples)"
            dir="$WORK/gallery"
            n="$(flatten "$GALLERY_DIR" "$dir" "$GALLERY_LIMIT")"
            [[ "$n" -gt 0 ]] || die "no photos under $GALLERY_DIR"
            repeat="$GALLERY_REPEAT" ;;
        large)
            dir="$WORK/large"
            make_large "$dir" || die "making the 12 MP photos failed (Pillow in $PYTHON?)"
            repeat="$GALLERY_REPEAT" ;;
        *) die "unknown set '$set' in BENCH_SETS (samples, gallery, large)" ;;
    esac
    echo "$set: $dir ($(find -L "$dir" -maxdepth 1 -type f | wc -l) files), threads=$THREADS, repeat=$repeat, warmup=$WARMUP" >&2
    i=0
    for variant in "${VARIANTS[@]}"; do
        read -ra extra <<< "$variant"
        label="facegroup${variant:+ $variant}"
        run_side "$set" "$label" "$WORK/facegroup-$set-$i.log" \
            "$FACEGROUP" bench "$dir" --json --threads "$THREADS" --repeat "$repeat" \
            --warmup "$WARMUP" "${extra[@]}"
        i=$((i + 1))
    done
    peer=(scripts/reference/bench_insightface.py --images "$dir" --repeat "$repeat" --warmup "$WARMUP")
    run_side "$set" "insightface ${THREADS}x1" "$WORK/insightface-$set-procs.log" \
        "$PYTHON" "${peer[@]}" --procs "$THREADS" --threads 1
    if [[ "$THREADS" -gt 1 ]]; then
        run_side "$set" "insightface 1x${THREADS}" "$WORK/insightface-$set-threads.log" \
            "$PYTHON" "${peer[@]}" --procs 1 --threads "$THREADS"
    fi
done

python3 - "$RESULTS" <<'PY'
import json, sys

keys = ["images", "faces", "seconds", "images_per_s", "faces_per_s", "peak_rss_mib"]
head = ["set", "side", "threads", "images", "faces", "seconds", "images/s", "faces/s",
        "peak RSS (MiB)"]
rows = []
with open(sys.argv[1]) as f:
    for line in f:
        set_name, label, raw = line.rstrip("\n").split("\t", 2)
        row = json.loads(raw)
        missing = [k for k in keys + ["threads"] if k not in row]
        if missing:
            sys.exit(f"error: {label} JSON lacks {missing}: {row}")
        rows.append((set_name, label, row))

def cell(k, v):
    if k == "peak_rss_mib":
        return f"{v:.1f}"
    return f"{v:.3f}" if isinstance(v, float) else str(v)

print("| " + " | ".join(head) + " |")
print("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
for set_name, label, row in rows:
    print("| " + " | ".join([set_name, label, str(row["threads"])] + [cell(k, row[k]) for k in keys]) + " |")

def ratio(a, b, k):
    return f"{a[k] / b[k]:.2f}x" if b[k] else "n/a"

print()
for set_name, label, row in rows:
    per_proc = row.get("peak_rss_mib_per_proc", [])
    if len(per_proc) > 1:
        print(f"{set_name}: {label} peak RSS {row['peak_rss_mib']:.1f} MiB = launcher + workers "
              f"{' + '.join(f'{m:.1f}' for m in per_proc)}")
for set_name in dict.fromkeys(s for s, _, _ in rows):
    ours = [(l, r) for s, l, r in rows if s == set_name and l.startswith("facegroup")]
    peers = [(l, r) for s, l, r in rows if s == set_name and l.startswith("insightface")]
    best_label, best = max(peers, key=lambda p: p[1]["images_per_s"])
    for label, fg in ours:
        print(f"{set_name}: {label} / {best_label} (faster peer): images/s {ratio(fg, best, 'images_per_s')}, "
              f"faces/s {ratio(fg, best, 'faces_per_s')}, peak RSS {ratio(fg, best, 'peak_rss_mib')}"
              + "".join(f"; vs {l}: images/s {ratio(fg, r, 'images_per_s')}"
                        for l, r in peers if l != best_label))
        if fg["faces"] != best["faces"]:
            print(f"  note: face counts differ ({label} {fg['faces']}, {best_label} {best['faces']}); "
                  "faces/s is not like for like.")
PY
