#!/usr/bin/env python3
"""Write a copy of an SCRFD model whose [1, A, C] outputs are squeezed to [A, C].

This is the output layout of InsightFace's buffalo packs (det_10g.onnx); the Rust tests run both
layouts of the same network to show the detector reads the layout from the model.
Needs only the `onnx` package.  Usage: squeeze_detector.py SRC DST
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import squeeze_detector  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    dst.parent.mkdir(parents=True, exist_ok=True)
    changed = squeeze_detector(src, dst)
    print(f"ok       {dst}" + ("" if changed else " (already unbatched, copied)"))
