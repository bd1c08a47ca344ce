#!/usr/bin/env python3
"""Generate crates/core/tests/data/insightface_reference.json with InsightFace 0.7.3.

    .venv/bin/python scripts/reference/gen_reference.py [--images testdata/images]
        [--detector models/scrfd_500m_bnkps.onnx] [--recognizer models/w600k_mbf.onnx]
        [--out crates/core/tests/data/insightface_reference.json]

For every test image (scripts/test-images.json order) it records width, height and, per face
(sorted by det_score, descending): bbox [x1,y1,x2,y2], kps [[x,y] x5], det_score and the
L2-normalised 512-d embedding (face.normed_embedding), as produced by
insightface.app.FaceAnalysis(det_size=640, det_thresh=0.5) on the CPU execution provider.
See common.py for why the detector is squeezed first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DET_SIZE = 640
DET_THRESH = 0.5


def r(values, nd):
    return [round(float(v), nd) for v in values]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=common.REPO / "testdata" / "images")
    ap.add_argument("--detector", type=Path, default=common.DEFAULT_DETECTOR)
    ap.add_argument("--recognizer", type=Path, default=common.DEFAULT_RECOGNIZER)
    ap.add_argument("--out", type=Path,
                    default=common.REPO / "crates" / "core" / "tests" / "data" / "insightface_reference.json")
    args = ap.parse_args()

    import cv2

    det = common.require(args.detector)
    rec = common.require(args.recognizer)
    det_sha = common.check_model_sha(det)
    rec_sha = common.check_model_sha(rec)
    for path in (det, rec):
        info = common.describe_model(path)
        print(f"{info['file']}: opset {info['opset']}", file=sys.stderr)
        for io in info["inputs"]:
            print(f"  in  {io['name']} {io['shape']} {io['type']}", file=sys.stderr)
        for io in info["outputs"]:
            print(f"  out {io['name']} {io['shape']} {io['type']}", file=sys.stderr)

    manifest = json.loads((common.REPO / "scripts" / "test-images.json").read_text())
    names = [e["file"] for e in manifest["images"]]
    missing = [n for n in names if not (args.images / n).is_file()]
    if missing:
        sys.exit(f"error: missing images in {args.images}: {missing}; run `python3 scripts/fetch.py images`")

    with tempfile.TemporaryDirectory(prefix="facegroup-ref-") as tmp:
        common.make_pack(Path(tmp), det, rec)
        app = common.make_app(Path(tmp), det_size=DET_SIZE, det_thresh=DET_THRESH)
        rec_model = app.models["recognition"]
        det_model = app.models["detection"]
        print(f"detector class {type(det_model).__name__}, input_mean {det_model.input_mean}, "
              f"input_std {det_model.input_std}, nms {det_model.nms_thresh}; recognizer class "
              f"{type(rec_model).__name__}, input_mean {rec_model.input_mean}, "
              f"input_std {rec_model.input_std}, input_size {rec_model.input_size}", file=sys.stderr)

        images = {}
        for name in names:
            img = cv2.imread(str(args.images / name))
            if img is None:
                sys.exit(f"error: cv2 could not decode {name}")
            faces = sorted(app.get(img), key=lambda f: -float(f.det_score))
            images[name] = {
                "width": int(img.shape[1]),
                "height": int(img.shape[0]),
                "faces": [{
                    "bbox": r(f.bbox, 4),
                    "kps": [r(p, 4) for p in f.kps],
                    "det_score": round(float(f.det_score), 6),
                    "embedding": r(f.normed_embedding, 6),
                } for f in faces],
            }
            print(f"{name}: {img.shape[1]}x{img.shape[0]}, {len(faces)} faces", file=sys.stderr)

    vers = common.versions()
    out = {
        "generator": "scripts/reference/gen_reference.py",
        "insightface": vers["insightface"],
        "onnxruntime": vers["onnxruntime"],
        "opencv": vers["opencv"],
        "numpy": vers["numpy"],
        "det_size": DET_SIZE,
        "det_thresh": DET_THRESH,
        "nms_thresh": 0.4,
        "models": {
            "detector": {"file": det.name, "sha256": det_sha,
                         "note": "run through insightface with a Squeeze(axes=[0]) on each output"},
            "recognizer": {"file": rec.name, "sha256": rec_sha},
        },
        "images": images,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
