#!/usr/bin/env python3
"""Single-thread cost of each stage facegroup's detection modes could change (issue 9 research).

    .venv/bin/python scripts/reference/profile_speed.py [--photos ../shared/faces/celeba-dev]
        [--sections sizes,detector,embedder,decode,profile] [--limit N]

Why: before changing the detector's input size, the JPEG decoder or the graph layout, we want
the figures that say which lever is worth it on the photos galleries are made of.  Everything
runs with onnxruntime on the CPU, intra_op_num_threads=1, inter_op_num_threads=1, sequential,
default graph optimisation (ORT_ENABLE_ALL), the same models the benchmark uses.

Sections (printed as markdown, numbers in milliseconds, medians over repeated runs):
  sizes     distribution of the photos' sizes and of the detector input shapes under three rules:
              square640  InsightFace: letterbox into 640x640 (always 640x640)
              fit640     the letterboxed photo's own size: scale to fit 640x640 (small photos are
                         upscaled), each side rounded up to 32
              native     never upscale: scale = min(1, 640 / long side), rounded up to 32
              up2        upscale by at most 2x: scale = min(2, 640 / long side), rounded up to 32
  detector  SCRFD time per call for every distinct shape above, and the per-photo mean of each
            rule weighted by how many photos get each shape
  embedder  w600k_mbf per face at batch 1 (and per face at batch 8, for comparison)
  decode    JPEG decode of the photos (bytes already in memory): PIL vs cv2, plus PIL's DCT
            scaling (Image.draft) to 1/2 for photos at least 1000 px on the long side
  profile   ORT's profiler on SCRFD at 640x640 and w600k_mbf at batch 1: share of each op type,
            the layout-reorder nodes (ReorderInput/ReorderOutput) and NCHWc ops in the optimised
            graph
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

RULES = ("square640", "fit640", "native", "up2")
DET_SIDE = 640


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=common.REPO.parent / "shared" / "faces" / "celeba-dev")
    ap.add_argument("--sections", default="sizes,detector,embedder,decode,profile")
    ap.add_argument("--limit", type=int, default=0, help="photos to use, spread evenly (0: all)")
    ap.add_argument("--decode-photos", type=int, default=300, help="photos timed in 'decode'")
    ap.add_argument("--runs", type=int, default=7, help="timed runs per detector shape")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    unknown = sections - {"sizes", "detector", "embedder", "decode", "profile"}
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}")

    photos = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg"})
    if not photos:
        sys.exit(f"error: no JPEG photos under {args.photos}")
    photos = spread(photos, args.limit)
    print(f"# {len(photos)} photos from {args.photos}; onnxruntime {common.versions()['onnxruntime']}, "
          "1 intra-op thread\n")

    sizes = photo_sizes(photos)
    if "sizes" in sections:
        report_sizes(sizes)
    if "detector" in sections:
        report_detector(sizes, args.runs)
    if "embedder" in sections:
        report_embedder()
    if "decode" in sections:
        report_decode(spread(photos, args.decode_photos))
    if "profile" in sections:
        report_profile("SCRFD-500M at 640x640", common.DEFAULT_DETECTOR, (1, 3, DET_SIDE, DET_SIDE))
        report_profile("w600k_mbf at batch 1", common.DEFAULT_RECOGNIZER, (1, 3, 112, 112), runs=100)
    return 0


def spread(items: list, limit: int) -> list:
    if not limit or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def photo_sizes(photos: list[Path]) -> list[tuple[int, int]]:
    from PIL import Image

    out = []
    for p in photos:
        with Image.open(p) as im:
            out.append(im.size)
    return out


def det_shape(rule: str, w: int, h: int) -> tuple[int, int]:
    """(width, height) of the detector input for a w x h photo under `rule`."""
    if rule == "square640":
        return DET_SIDE, DET_SIDE
    fit = DET_SIDE / max(w, h)
    scale = {"fit640": fit, "native": min(1.0, fit), "up2": min(2.0, fit)}[rule]
    up32 = lambda v: max(32, math.ceil(round(v * scale) / 32) * 32)
    return up32(w), up32(h)


def report_sizes(sizes: list[tuple[int, int]]) -> None:
    mp = [w * h / 1e6 for w, h in sizes]
    longs = [max(w, h) for w, h in sizes]
    print("## Photo sizes\n")
    print(f"{len(set(sizes))} distinct sizes; megapixels min {min(mp):.3f}, median "
          f"{statistics.median(mp):.3f}, max {max(mp):.3f}")
    buckets = collections.Counter()
    for side in longs:
        buckets[next(b for b in (256, 384, 512, 640, 800, 1024, 1 << 30) if side <= b)] += 1
    print("long side: " + ", ".join(
        f"<= {b if b < 1 << 30 else 'more'}: {n}" for b, n in sorted(buckets.items())))
    print("most common sizes: " + ", ".join(f"{w}x{h} ({n})" for (w, h), n in
                                            collections.Counter(sizes).most_common(8)))
    for rule in RULES[1:]:
        shapes = collections.Counter(det_shape(rule, w, h) for w, h in sizes)
        px = statistics.mean(a * b for a, b in (det_shape(rule, w, h) for w, h in sizes))
        print(f"{rule}: {len(shapes)} distinct detector shapes, mean {px / DET_SIDE ** 2:.2f} x the "
              f"pixels of 640x640; most common: " + ", ".join(
                  f"{a}x{b} ({n})" for (a, b), n in shapes.most_common(5)))
    print()


def session(path: Path, **opts):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # batch 8 on w600k_mbf warns on every run (output declared [1, 512])
    for key, value in opts.items():
        setattr(so, key, value)
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def time_call(fn, runs: int, warmup: int = 2) -> tuple[float, float]:
    """(minimum, median) milliseconds of `runs` calls after `warmup` untimed ones.  The minimum
    is the headline figure: on a shared machine the other jobs only ever add time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return min(times), statistics.median(times)


def report_detector(sizes: list[tuple[int, int]], runs: int) -> None:
    import numpy as np

    sess = session(common.require(common.DEFAULT_DETECTOR))
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    per_rule = {rule: collections.Counter(det_shape(rule, w, h) for w, h in sizes) for rule in RULES}
    shapes = sorted(set().union(*per_rule.values()), key=lambda s: -s[0] * s[1])
    inputs = {(w, h): rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32) for w, h in shapes}
    # Round-robin over the shapes, so that load from other jobs drifting over time hits every
    # shape alike; the first round is the warm-up.
    times = collections.defaultdict(list)
    for round_no in range(runs + 1):
        for shape, x in inputs.items():
            t = time.perf_counter()
            sess.run(None, {name: x})
            if round_no:
                times[shape].append((time.perf_counter() - t) * 1e3)
    cost = {shape: (min(ts), statistics.median(ts)) for shape, ts in times.items()}
    base, base_med = cost[(DET_SIDE, DET_SIDE)]
    print(f"{len(shapes)} distinct shapes timed (round-robin, {runs} rounds). 640x640: {base:.2f} ms min, "
          f"{base_med:.2f} ms median\n")
    print("| rule | mean ms / photo (min per shape) | vs 640x640 | same from medians | vs 640x640 |")
    print("|---|---:|---:|---:|---:|")
    for rule in RULES:
        best = statistics.mean(cost[det_shape(rule, w, h)][0] for w, h in sizes)
        med = statistics.mean(cost[det_shape(rule, w, h)][1] for w, h in sizes)
        print(f"| {rule} | {best:.2f} | {best / base:.2f}x | {med:.2f} | {med / base_med:.2f}x |")
    sample = sorted(cost.items(), key=lambda kv: kv[0][0] * kv[0][1])
    picks = spread(sample, 8)
    print("\nsample shapes (w x h: min ms): " + ", ".join(f"{w}x{h}: {ms[0]:.2f}" for (w, h), ms in picks))
    print()


def report_embedder() -> None:
    import numpy as np

    sess = session(common.require(common.DEFAULT_RECOGNIZER))
    name = sess.get_inputs()[0].name
    x1 = np.random.default_rng(1).uniform(-1, 1, (1, 3, 112, 112)).astype(np.float32)
    one = time_call(lambda: sess.run(None, {name: x1}), 200, warmup=10)
    print("## w600k_mbf (1 thread)\n")
    line = f"batch 1: {one[0]:.2f} ms per face (median {one[1]:.2f})"
    try:
        x8 = np.repeat(x1, 8, axis=0)
        eight = time_call(lambda: sess.run(None, {name: x8}), 30, warmup=3)
        line += f"; batch 8: {eight[0] / 8:.2f} ms per face (median {eight[1] / 8:.2f})"
    except Exception as exc:  # the model's output shape is declared [1, 512]
        line += f"; batch 8 not accepted ({type(exc).__name__})"
    print(line + "\n")


def report_decode(photos: list[Path]) -> None:
    import cv2
    import numpy as np
    from PIL import Image

    cv2.setNumThreads(1)
    blobs = [p.read_bytes() for p in photos]
    mpix = sum(w * h for w, h in photo_sizes(photos)) / 1e6

    def pil_all():
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                im.convert("RGB").load()

    def cv2_all():
        for b in blobs:
            cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)

    large = [b for b, (w, h) in zip(blobs, photo_sizes(photos)) if max(w, h) >= 1000]

    def pil_large(draft: bool):
        for b in large:
            with Image.open(io.BytesIO(b)) as im:
                if draft:
                    im.draft("RGB", (im.size[0] // 2, im.size[1] // 2))
                im.convert("RGB").load()

    n = len(blobs)
    t_pil = time_call(pil_all, 5, warmup=1)[0]
    t_cv2 = time_call(cv2_all, 5, warmup=1)[0]
    print(f"## JPEG decode of {n} photos ({mpix / n:.3f} MP mean, bytes in memory, 1 thread, "
          "best of 5 passes)\n")
    print(f"PIL {Image.__version__} (libjpeg-turbo inside Pillow's wheel): {t_pil / n:.2f} ms/photo, "
          f"{mpix / (t_pil / 1e3):.1f} MP/s")
    print(f"cv2 {cv2.__version__} imdecode: {t_cv2 / n:.2f} ms/photo, {mpix / (t_cv2 / 1e3):.1f} MP/s")
    if large:
        full = time_call(lambda: pil_large(False), 5, warmup=1)[0]
        half = time_call(lambda: pil_large(True), 5, warmup=1)[0]
        print(f"{len(large)} photos >= 1000 px: PIL full {full / len(large):.2f} ms, with DCT scaling "
              f"to 1/2 {half / len(large):.2f} ms per photo")
    print()


def report_profile(title: str, model: Path, shape: tuple, runs: int = 30) -> None:
    det = common.require(model)
    with tempfile.TemporaryDirectory(prefix="facegroup-prof-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        sess = session(det, enable_profiling=True, profile_file_prefix=str(Path(tmp) / "prof"),
                       optimized_model_filepath=str(optimized))
        import numpy as np

        name = sess.get_inputs()[0].name
        x = np.random.default_rng(2).uniform(-1, 1, shape).astype(np.float32)
        for _ in range(runs):
            sess.run(None, {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
        graph_ops = optimized_ops(optimized)

    node_events = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    run_events = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    by_op = collections.Counter()
    for e in node_events:
        by_op[e.get("args", {}).get("op_name", "?")] += e["dur"]
    total = sum(by_op.values())
    run_total = sum(e["dur"] for e in run_events)
    print(f"## ORT profile, {title} ({runs} runs, 1 thread)\n")
    print(f"model_run {run_total / max(1, len(run_events)) / 1e3:.2f} ms per run; kernels sum to "
          f"{total / max(1, len(run_events)) / 1e3:.2f} ms per run\n")
    print("| op type | share of kernel time | ms per run |")
    print("|---|---:|---:|")
    for op, dur in by_op.most_common():
        print(f"| {op} | {100 * dur / total:.1f}% | {dur / max(1, len(run_events)) / 1e3:.3f} |")
    reorder = sum(d for op, d in by_op.items() if op.startswith("Reorder"))
    print(f"\nlayout reorders (ReorderInput + ReorderOutput): {100 * reorder / total:.1f}% of kernel time")
    print("optimised graph node counts: " + ", ".join(f"{op} {n}" for op, n in graph_ops.most_common()))
    print()


def optimized_ops(path: Path) -> collections.Counter:
    import onnx

    model = onnx.load(str(path))
    return collections.Counter(
        (n.domain + "." if n.domain and n.domain != "ai.onnx" else "") + n.op_type for n in model.graph.node)


if __name__ == "__main__":
    sys.exit(main())
