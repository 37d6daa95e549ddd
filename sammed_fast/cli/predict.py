"""``sammed-fast predict`` / ``python -m sammed_fast.predict``: a finished run applied to new
volumes (``experiment.prediction.predict``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from sammed_fast.cli import command
from sammed_fast.experiment.prediction import DEFAULT_BATCH, PredictionFailed, predict

__all__ = ["SUMMARY", "main"]

SUMMARY = "Apply a finished run to new images (NIfTI volumes or 2D images): one mask or label map per input."


@command()
def main(argv: Sequence[str] | None = None, prog: str = "python -m sammed_fast.predict") -> int:
    """Prints the written masks; exits 1 after writing the others when some inputs failed."""
    parser = argparse.ArgumentParser(prog=prog, description=SUMMARY)
    parser.add_argument("--run", type=Path, required=True, help="finished run folder of sammed_fast.train")
    parser.add_argument("--input", type=Path, required=True,
                        help="a NIfTI volume or a 2D image (PNG/JPEG/TIFF), a folder of NIfTI volumes, or a "
                             "dataset description (manifest .csv/.json or nnU-Net folder: the images of its cases)")
    parser.add_argument("--output", type=Path, required=True,
                        help="output folder (or a .nii/.nii.gz file name for a single input)")
    parser.add_argument("--boxes", type=Path, default=None,
                        help="box prompts from a CSV (image,slice,structure,x0,y0,x1,y1: inclusive pixels "
                             "of the input's slices) instead of the segmenter's")
    parser.add_argument("--overlays", action="store_true", help="also write <stem>_overlay.png")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                        help="slices per step, a multiple of 4 (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        written = predict(run=args.run, inputs=args.input, output=args.output, overlays=args.overlays,
                          device=args.device, batch=args.batch, boxes=args.boxes,
                          progress=not args.no_progress and sys.stderr.isatty())
    except PredictionFailed as error:
        print(f"{len(error.written)} mask(s) written; {len(error.failed)} input(s) failed:",
              file=sys.stderr)
        for message in error.failed.values():
            print(f"  {message}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0
