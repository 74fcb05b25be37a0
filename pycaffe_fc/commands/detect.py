"""``fc-caffe detect INPUT.csv OUTPUT.{csv,h5}``: pycaffe's python/detect.py (R-CNN), same flags.

INPUT is a .csv with a header naming ``filename``, ``ymin``, ``xmin``, ``ymax``, ``xmax`` (one
window per row; ``--crop_mode list``). The output has one row per window, indexed by filename, with
the window and one column per class (``class0``...): a .csv as pandas' ``to_csv`` writes it, or an
.h5 (``df`` written by pandas/PyTables when both are installed, else datasets ``df/filename``,
``df/ymin``.. ``df/xmax`` and ``df/prediction`` written with h5py).

Deliberate differences from detect.py: ``--crop_mode selective_search`` (which runs the MATLAB
selective-search code) is not available, so ``list`` is the default; ``--model_def`` and
``--pretrained_model`` are required (no bundled R-CNN model) and ``--mean_file`` has no default;
the class count is the net's output width (detect.py assumes ILSVRC13's 200).
"""
from __future__ import annotations

import argparse
import csv
import os
import time

import numpy as np

from ..errors import CaffeError
from ._transformflags import add_model_arguments, add_preprocessing_arguments, load_mean, preprocessing, set_mode

CROP_MODES = ["list", "selective_search"]
COORD_COLS = ["ymin", "xmin", "ymax", "xmax"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input_file", help="input csv filename with a header 'filename, ymin, xmin, ymax, xmax' "
                   "(or txt of image filenames for selective_search, which fc-caffe lacks)")
    p.add_argument("output_file", help="output h5/csv filename; the format depends on the extension")
    add_model_arguments(p)
    p.add_argument("--crop_mode", default="list", choices=CROP_MODES,
                   help="how to generate windows for detection (only 'list' in fc-caffe)")
    p.add_argument("--gpu", action="store_true", help="switch for gpu computation")
    p.add_argument("--mean_file", default="", help="data set image mean of H x W x K dimensions (numpy "
                   "array, or a .binaryproto); reduced to channel means as detect.py does")
    add_preprocessing_arguments(p)
    p.add_argument("--context_pad", type=int, default=16, help="amount of surrounding context to collect "
                   "in input window")


def read_windows(path: str) -> list[tuple[str, np.ndarray]]:
    """(filename, windows (ymin, xmin, ymax, xmax) rows) per image, in first-appearance order."""
    if not path.lower().endswith("csv"):
        raise CaffeError(f"{path}: unknown input file type: not csv (txt lists need selective_search)")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, skipinitialspace=True))
    except OSError as e:
        raise CaffeError(f"{path}: cannot read ({e.strerror})") from None
    if not rows or any(c not in rows[0] for c in ["filename"] + COORD_COLS):
        raise CaffeError(f"{path}: needs a header with filename, {', '.join(COORD_COLS)} "
                         "and one row per window")
    by_image: dict[str, list] = {}
    for i, r in enumerate(rows, 2):
        try:
            by_image.setdefault(r["filename"], []).append([float(r[c]) for c in COORD_COLS])
        except (TypeError, ValueError):
            raise CaffeError(f"{path}:{i}: window coordinates must be numbers") from None
    return [(f, np.asarray(w)) for f, w in by_image.items()]


def write_detections(path: str, detections: list[dict]) -> None:
    """detect.py's output: one row per window, indexed by filename (csv or h5 by extension)."""
    preds = np.stack([np.asarray(d["prediction"], np.float32).ravel() for d in detections]) \
        if detections else np.zeros((0, 0), np.float32)
    windows = np.stack([np.asarray(d["window"], np.float64)[:4] for d in detections]) \
        if detections else np.zeros((0, 4))
    names = [d["filename"] for d in detections]
    class_cols = [f"class{x}" for x in range(preds.shape[1])]
    if path.lower().endswith("csv"):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename"] + COORD_COLS + class_cols)
            for name, win, p in zip(names, windows, preds):
                w.writerow([name] + [repr(float(v)) for v in win] + [repr(float(v)) for v in p])
        return
    try:
        import pandas as pd  # pycaffe's own format when pandas and PyTables are there
        import tables  # noqa: F401
    except ImportError:
        pd = None
    if pd is not None:
        df = pd.DataFrame({"filename": names, **{c: windows[:, i] for i, c in enumerate(COORD_COLS)}})
        df["prediction"] = list(preds)
        df.set_index("filename", inplace=True)
        df.to_hdf(path, key="df", mode="w")
        return
    import h5py
    with h5py.File(path, "w") as f:
        g = f.create_group("df")
        g.create_dataset("filename", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        for i, c in enumerate(COORD_COLS):
            g.create_dataset(c, data=windows[:, i])
        g.create_dataset("prediction", data=preds)


def main(args: argparse.Namespace) -> int:
    from ..detector import Detector

    if args.crop_mode == "selective_search":
        raise CaffeError("--crop_mode selective_search needs the MATLAB selective search code, which "
                         "fc-caffe does not include; give the windows in a csv with --crop_mode list")
    mean = None
    if args.mean_file:
        mean = load_mean(args.mean_file)
        if mean.ndim == 3 and mean.shape[1:] != (1, 1):
            mean = mean.mean(1).mean(1)  # detect.py: the context pad is filled with channel means
    kwargs = preprocessing(args)
    set_mode(args.gpu)
    detector = Detector(args.model_def, args.pretrained_model, mean=mean, context_pad=args.context_pad,
                        **kwargs)
    t = time.time()
    print("Loading input...")
    images_windows = read_windows(args.input_file)
    for fname, _ in images_windows:
        if not os.path.isfile(fname):
            raise CaffeError(f"{args.input_file}: image {fname}: no such file")
    detections = detector.detect_windows(images_windows)
    print(f"Processed {len(detections)} windows in {time.time() - t:.3f} s.")
    t = time.time()
    write_detections(args.output_file, detections)
    print(f"Saved to {args.output_file} in {time.time() - t:.3f} s.")
    return 0
