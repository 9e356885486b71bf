"""``selmatch export``: a saved set as an ImageFolder tree of PNGs or as one NumPy archive."""

from __future__ import annotations

import argparse
from pathlib import Path

from selmatch.cli import common
from selmatch.sets.export import FORMATS, export_set

SUMMARY = "write a saved set as PNG class folders (ImageFolder) or a .npz, for other tools"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help=SUMMARY,
        description=(
            "Export a saved set (set.safetensors + manifest.json, as `selmatch distill` or "
            "`selmatch window` write it) for use outside selmatch. The stored images are "
            "normalised with the dataset's mean/std; the export undoes that and writes 8-bit "
            "pixels (real images come back exactly, learned ones are clamped to [0, 255]). "
            "Load any of the outputs, or the set itself, with selmatch.load_synthetic(PATH), a "
            "torch Dataset of ([0, 1] image, label) pairs. See docs/export.md."
        ),
    )
    parser.add_argument(
        "set_dir",
        type=Path,
        metavar="SET_DIR",
        help="the saved set folder to export (holds set.safetensors and manifest.json)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="PATH",
        help="where to write: a folder for imagefolder, a file for npz ('.npz' is appended "
        "when missing). Written under a temporary name and renamed into place",
    )
    parser.add_argument(
        "--format",
        default="imagefolder",
        choices=FORMATS,
        help="imagefolder: PATH/<label>_<class name>/<index>.png (grayscale 'L' or 'RGB'; "
        "folders sort in label order, as torchvision's ImageFolder expects), plus "
        "PATH/labels.csv (file,label,class,part; part = distill or select) and "
        "PATH/manifest.json. npz: images uint8 (N,H,W,C), labels int64, distill_mask bool, "
        "class_names, manifest (JSON string), images_normalized float32 (N,C,H,W, the stored "
        "tensor), mean, std, and source_indices / learned_lr when the set has them; reads "
        "with numpy.load(PATH, allow_pickle=False) (default: imagefolder)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing non-empty PATH; only a previous export (or a file, for npz) "
        "is replaced, never an unrelated folder (default: refuse)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    common.check_output(args.out, "any", writes="export")  # export_set checks the target itself
    exported = export_set(args.set_dir, args.out, args.format, overwrite=args.overwrite)
    selected = exported.count - exported.num_distill
    print(
        f"exported {exported.count} images ({exported.num_distill} distilled, {selected} "
        f"selected) of {args.set_dir} as {exported.format} to {exported.path.resolve()}"
    )
    return 0
