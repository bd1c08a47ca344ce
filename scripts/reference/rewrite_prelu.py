#!/usr/bin/env python3
"""Experiment: exact rewrites of PRelu in w600k_mbf, timed against the original (issue 9).

    .venv/bin/python scripts/reference/rewrite_prelu.py [--model models/w600k_mbf.onnx] [--runs 200]

Why: ORT's profile of w600k_mbf at batch 1 (profile_speed.py --sections profile) shows PRelu
taking about half of the kernel time, and every PRelu forcing a ReorderOutput/ReorderInput
pair, because the NCHWc transformer keeps only some op types in the blocked layout.  PRelu with
a per-channel slope s can be written exactly (for finite x, bit for bit: each output is x or
s*x computed by one multiply) with ops that layout does keep:

  relu_mul   Relu(x) + (-s) * Relu(-x)                    (Neg, Relu, Mul, Add)
  dwconv     Relu(x) + DWConv1x1(-s)(Relu(DWConv1x1(-1)(x)))   depthwise 1x1 convs, the inner
                                                            one with its Relu fused by ORT

For each variant it checks the outputs against the original on random inputs and times it at
1 intra-op thread, round-robin with the original so that load from other jobs hits all alike.
Writes nothing outside a temporary folder.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=common.DEFAULT_RECOGNIZER)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()

    import numpy as np
    import onnx

    src = onnx.load(str(common.require(args.model)))
    with tempfile.TemporaryDirectory(prefix="facegroup-prelu-") as tmp:
        paths = {"original": Path(tmp) / "original.onnx"}
        onnx.save(src, str(paths["original"]))
        for variant in ("relu_mul", "dwconv"):
            model = onnx.load(str(paths["original"]))
            count = rewrite(model, variant)
            onnx.checker.check_model(model)
            paths[variant] = Path(tmp) / f"{variant}.onnx"
            onnx.save(model, str(paths[variant]))
            print(f"{variant}: rewrote {count} PRelu nodes")
        sessions = {k: session(p, p.with_suffix(".opt.onnx")) for k, p in paths.items()}
        for k, p in paths.items():
            ops = collections.Counter(n.op_type for n in onnx.load(str(p.with_suffix(".opt.onnx"))).graph.node)
            print(f"{k}: optimised graph has " + ", ".join(f"{op} {n}" for op, n in sorted(ops.items())))

        rng = np.random.default_rng(3)
        name = sessions["original"].get_inputs()[0].name
        worst = collections.defaultdict(float)
        for _ in range(20):
            x = rng.uniform(-1, 1, (1, 3, 112, 112)).astype(np.float32)
            ref = sessions["original"].run(None, {name: x})[0]
            for k, s in sessions.items():
                worst[k] = max(worst[k], float(np.max(np.abs(s.run(None, {name: x})[0] - ref))))
        for k, diff in worst.items():
            if diff > 1e-4:
                sys.exit(f"error: {k} differs from the original by up to {diff}")
        print("outputs vs original on 20 random inputs, max abs diff: "
              + ", ".join(f"{k} {d:.1e}" for k, d in worst.items() if k != "original"))
        x = rng.uniform(-1, 1, (1, 3, 112, 112)).astype(np.float32)
        times = collections.defaultdict(list)
        for i in range(args.runs + 5):
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {name: x})
                if i >= 5:
                    times[k].append((time.perf_counter() - t) * 1e3)
        base = min(times["original"])
        print("\n| variant | min ms / face | median ms | vs original (min) |")
        print("|---|---:|---:|---:|")
        for k, ts in times.items():
            print(f"| {k} | {min(ts):.2f} | {statistics.median(ts):.2f} | {min(ts) / base:.2f}x |")
    return 0


def rewrite(model, variant: str) -> int:
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    out_nodes = []
    count = 0
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in inits:
            out_nodes.append(node)
            continue
        slope = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        channels = slope.size
        x, y, tag = node.input[0], node.output[0], f"prelu{count}"
        relu_x = helper.make_node("Relu", [x], [f"{tag}_relu"], name=f"{tag}_relu")
        if variant == "relu_mul":
            neg_s = numpy_helper.from_array(-slope.reshape(channels, 1, 1), f"{tag}_neg_s")
            graph.initializer.append(neg_s)
            new = [
                relu_x,
                helper.make_node("Neg", [x], [f"{tag}_negx"], name=f"{tag}_neg"),
                helper.make_node("Relu", [f"{tag}_negx"], [f"{tag}_relu_negx"], name=f"{tag}_relu2"),
                helper.make_node("Mul", [f"{tag}_relu_negx", neg_s.name], [f"{tag}_neg_part"],
                                 name=f"{tag}_mul"),
                helper.make_node("Add", [f"{tag}_relu", f"{tag}_neg_part"], [y], name=f"{tag}_add"),
            ]
        else:
            minus_one = numpy_helper.from_array(
                np.full((channels, 1, 1, 1), -1.0, np.float32), f"{tag}_w_neg")
            neg_s = numpy_helper.from_array(-slope.reshape(channels, 1, 1, 1), f"{tag}_w_s")
            graph.initializer.extend([minus_one, neg_s])
            dw = dict(group=channels, kernel_shape=[1, 1])
            new = [
                relu_x,
                helper.make_node("Conv", [x, minus_one.name], [f"{tag}_negx"], name=f"{tag}_dw1", **dw),
                helper.make_node("Relu", [f"{tag}_negx"], [f"{tag}_relu_negx"], name=f"{tag}_relu2"),
                helper.make_node("Conv", [f"{tag}_relu_negx", neg_s.name], [f"{tag}_neg_part"],
                                 name=f"{tag}_dw2", **dw),
                helper.make_node("Add", [f"{tag}_relu", f"{tag}_neg_part"], [y], name=f"{tag}_add"),
            ]
        out_nodes.extend(new)
        count += 1
    del graph.node[:]
    graph.node.extend(out_nodes)
    return count


def session(path: Path, optimized: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(optimized)
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    sys.exit(main())
