#!/usr/bin/env python3
"""End-to-end throughput of InsightFace 0.7.3 on a folder of images (the facegroup baseline).

    .venv/bin/python scripts/reference/bench_insightface.py --images DIR --threads T
        [--procs P] [--repeat R] [--warmup W] [--split dynamic|static]

Each image is cv2.imread + FaceAnalysis.get(img), i.e. decode, detect (det_size 640,
det_thresh 0.5), align and embed every face; the timed work is every image in DIR (sorted),
R times.  onnxruntime runs on the CPU with intra_op_num_threads=T, inter_op_num_threads=1;
cv2.setNumThreads(T); OMP/OpenBLAS/MKL thread counts default to T as well.

Two ways to use P*T cores, because Python users who want throughput do not stop at intra-op
threads:

* --procs 1 (default): one process, T intra-op threads.  W untimed warm-up passes over DIR,
  then the timed passes.
* --procs P > 1: P worker processes (spawned), each with its own FaceAnalysis and T threads.
  Each worker loads its models and runs W warm-up passes over its 1/P share of DIR, reports
  ready and waits; once all are ready the launcher starts the clock and lets them go (a common
  start, like a barrier), and the clock stops when the last worker finishes.  The timed
  images are shared out through one counter (--split dynamic, default: like
  multiprocessing.Pool.imap with chunksize 1, so one many-face photo does not leave a core
  idle) or dealt round-robin up front (--split static).

Prints one JSON line on stdout:

  {"impl":"insightface-0.7.3","mode":"PxT","procs":P,"intra_threads":T,"threads":P*T,
   "split":..,"images":..,"faces":..,"seconds":..,"images_per_s":..,"faces_per_s":..,
   "peak_rss_mib":..,"peak_rss_mib_per_proc":[..]}

images/faces count the timed work only (images = len(DIR) * R).  peak_rss_mib is ru_maxrss
summed over every process of the peer (the workers and, with P > 1, the launching process),
so it includes each interpreter, numpy, OpenCV and both sessions.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# How often the launcher checks that no worker died while it waits for them.
RESULT_POLL_S = 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--threads", type=int, required=True, help="intra-op threads per process")
    ap.add_argument("--procs", type=int, default=1, help="worker processes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--split", choices=["dynamic", "static"], default="dynamic")
    ap.add_argument("--detector", type=Path, default=common.DEFAULT_DETECTOR)
    ap.add_argument("--recognizer", type=Path, default=common.DEFAULT_RECOGNIZER)
    args = ap.parse_args()
    if args.threads < 1 or args.procs < 1 or args.repeat < 1 or args.warmup < 0:
        ap.error("--threads, --procs and --repeat must be >= 1, --warmup >= 0")

    # Before numpy/cv2 load anywhere (spawned workers inherit the environment).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))

    paths = [str(p) for p in common.list_images(args.images)]
    if not paths:
        sys.exit(f"error: no images in {args.images}")
    det = common.require(args.detector)
    rec = common.require(args.recognizer)

    with tempfile.TemporaryDirectory(prefix="facegroup-bench-") as tmp:
        make_pack_elsewhere(Path(tmp), det, rec)
        if args.procs == 1:
            result = run_in_process(Path(tmp), paths, args)
        else:
            result = run_processes(Path(tmp), paths, args)

    images = len(paths) * args.repeat
    seconds = result["seconds"]
    print(json.dumps({
        "impl": f"insightface-{result['version']}",
        "mode": f"{args.procs}x{args.threads}",
        "procs": args.procs,
        "intra_threads": args.threads,
        "threads": args.procs * args.threads,
        "split": args.split if args.procs > 1 else "none",
        "images": images,
        "faces": result["faces"],
        "seconds": round(seconds, 4),
        "images_per_s": round(images / seconds, 3),
        "faces_per_s": round(result["faces"] / seconds, 3),
        "peak_rss_mib": round(sum(result["peak_rss_mib"]), 1),
        "peak_rss_mib_per_proc": [round(m, 1) for m in result["peak_rss_mib"]],
    }))
    return 0


def make_pack_elsewhere(root: Path, det: Path, rec: Path) -> None:
    """common.make_pack() in a short-lived process, so that loading the models with the `onnx`
    package (a step a deployed peer would not repeat) stays out of every measured peak RSS."""
    proc = mp.get_context("spawn").Process(target=common.make_pack, args=(root, det, rec))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        sys.exit(f"error: writing the model pack failed (exit code {proc.exitcode})")


def run_in_process(pack_root: Path, paths: list[str], args) -> dict:
    """--procs 1: warm up, then time R passes over every image in this process."""
    app = load_app(pack_root, args.threads)
    for _ in range(args.warmup):
        for path in paths:
            analyze(app, path)
    faces = 0
    start = time.perf_counter()
    for _ in range(args.repeat):
        for path in paths:
            faces += analyze(app, path)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "faces": faces, "peak_rss_mib": [peak_rss_mib()],
            "version": common.versions()["insightface"]}


def run_processes(pack_root: Path, paths: list[str], args) -> dict:
    """--procs P: start P workers, start the clock once all are warm, wait for the last."""
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    counter = ctx.Value("q", 0)
    workers = [
        ctx.Process(target=worker_main, name=f"insightface-{i}",
                    args=(i, pack_root, paths, args.procs, args.threads, args.repeat,
                          args.warmup, args.split, ready, go, counter, results))
        for i in range(args.procs)
    ]
    for w in workers:
        w.start()
    try:
        collect(workers, ready)  # every worker has loaded its models and warmed up
        start = time.monotonic()
        go.set()
        got = collect(workers, results)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
            w.join()
    end = max(r["end"] for r in got)
    return {"seconds": end - start, "faces": sum(r["faces"] for r in got),
            "peak_rss_mib": [peak_rss_mib()] + [r["peak_rss_mib"] for r in got],
            "version": got[0]["version"]}


def collect(workers, messages) -> list:
    """One message per worker; fails fast if a worker dies without sending its own."""
    got: list = []
    while len(got) < len(workers):
        try:
            got.append(messages.get(timeout=RESULT_POLL_S))
        except queue.Empty:
            dead = [w.name for w in workers if w.exitcode not in (None, 0)]
            if dead:
                sys.exit(f"error: worker(s) {dead} failed; see their stderr above")
    return got


def worker_main(index, pack_root, paths, procs, threads, repeat, warmup, split, ready, go, counter,
                results) -> None:
    # FaceAnalysis and insightface print on stdout; the launcher's stdout carries the JSON.
    sys.stdout = sys.stderr
    app = load_app(pack_root, threads)
    for _ in range(warmup):
        for path in paths[index::procs]:
            analyze(app, path)
    ready.put(index)
    go.wait()
    faces = 0
    if split == "static":
        mine = paths[index::procs]
        for _ in range(repeat):
            for path in mine:
                faces += analyze(app, path)
    else:
        total = len(paths) * repeat
        while True:
            with counter.get_lock():
                k = counter.value
                counter.value = k + 1
            if k >= total:
                break
            faces += analyze(app, paths[k % len(paths)])
    end = time.monotonic()
    results.put({"index": index, "faces": faces, "end": end, "peak_rss_mib": peak_rss_mib(),
                 "version": common.versions()["insightface"]})


def load_app(pack_root: Path, threads: int):
    import cv2

    cv2.setNumThreads(threads)
    return common.make_app(pack_root, threads=threads)


def analyze(app, path: str) -> int:
    import cv2

    img = cv2.imread(path)
    if img is None:
        sys.exit(f"error: cv2 could not decode {path}")
    return len(app.get(img))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


if __name__ == "__main__":
    sys.exit(main())
