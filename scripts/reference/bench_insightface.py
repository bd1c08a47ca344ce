#!/usr/bin/env python3
"""End-to-end throughput of InsightFace 0.7.3 on a folder of images (the facegroup baseline).

    .venv/bin/python scripts/reference/bench_insightface.py --images DIR --threads N --repeat R [--warmup 1]

Each iteration goes over every image in DIR (sorted): cv2.imread + FaceAnalysis.get(img), i.e.
decode, detect (det_size 640, det_thresh 0.5), align and embed every face.  onnxruntime runs
on the CPU with intra_op_num_threads=N, inter_op_num_threads=1; cv2.setNumThreads(N).
Warm-up iterations are not timed.  Prints one JSON line on stdout:

  {"impl":"insightface-0.7.3","threads":N,"images":..,"faces":..,"seconds":..,
   "images_per_s":..,"faces_per_s":..,"peak_rss_mib":..}

images/faces count the timed iterations only (images = len(DIR) * R).  peak_rss_mib is the
process's ru_maxrss, so it includes the Python interpreter, numpy, OpenCV and both sessions.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--detector", type=Path, default=common.DEFAULT_DETECTOR)
    ap.add_argument("--recognizer", type=Path, default=common.DEFAULT_RECOGNIZER)
    args = ap.parse_args()
    if args.threads < 1 or args.repeat < 1 or args.warmup < 0:
        ap.error("--threads and --repeat must be >= 1, --warmup >= 0")

    import cv2

    cv2.setNumThreads(args.threads)
    paths = [str(p) for p in common.list_images(args.images)]
    if not paths:
        sys.exit(f"error: no images in {args.images}")
    det = common.require(args.detector)
    rec = common.require(args.recognizer)

    with tempfile.TemporaryDirectory(prefix="facegroup-bench-") as tmp:
        common.make_pack(Path(tmp), det, rec)
        app = common.make_app(Path(tmp), threads=args.threads)

        def one_pass() -> int:
            faces = 0
            for path in paths:
                img = cv2.imread(path)
                if img is None:
                    sys.exit(f"error: cv2 could not decode {path}")
                faces += len(app.get(img))
            return faces

        for _ in range(args.warmup):
            one_pass()
        faces = 0
        start = time.perf_counter()
        for _ in range(args.repeat):
            faces += one_pass()
        seconds = time.perf_counter() - start

    images = len(paths) * args.repeat
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({
        "impl": f"insightface-{common.versions()['insightface']}",
        "threads": args.threads,
        "images": images,
        "faces": faces,
        "seconds": round(seconds, 4),
        "images_per_s": round(images / seconds, 3),
        "faces_per_s": round(faces / seconds, 3),
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
