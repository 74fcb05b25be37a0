"""Feature extraction into databases, as Caffe's tools/extract_features.cpp.

``extract_features(net, blob_names, dataset_names, num_mini_batches, db_type)`` runs the net's
Forward ``num_mini_batches`` times and, per blob and per image of each batch, stores a Datum with
the image's values in ``float_data`` and the blob's legacy ``channels``/``height``/``width``
(Blob::channels() etc.: axes 1..3, 1 where the blob has fewer) under the key ``%010d`` (the image's
index, counted per blob), committing every 1000 records, in an LMDB or a LevelDB per blob.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from . import backend
from .data.db import open_writer
from .errors import CaffeError
from .net import Net
from .proto import caffe_pb2

log = logging.getLogger("pycaffe_fc")

#: the records extract_features commits at once, and after which it logs (as Caffe)
COMMIT_EVERY = 1000


def legacy_chw(shape: Sequence[int], what: str) -> tuple[int, int, int]:
    """Blob::channels(), height(), width(): LegacyShape(1..3), 1 past the blob's axes (<= 4 axes)."""
    if len(shape) > 4:
        raise CaffeError(f"{what}: cannot use legacy accessors on a blob of {len(shape)} axes {list(shape)}")
    dims = list(shape) + [1] * (4 - len(shape))
    return int(dims[1]), int(dims[2]), int(dims[3])


def extract_features(net: Net, blob_names: Sequence[str], dataset_names: Sequence[str],
                     num_mini_batches: int, db_type: str = "lmdb") -> list[int]:
    """Write the features of ``blob_names`` into the new databases ``dataset_names``; returns the
    number of records written per blob."""
    if len(blob_names) != len(dataset_names):
        raise CaffeError(f"extract_features: the number of blob names ({len(blob_names)}) and dataset "
                         f"names ({len(dataset_names)}) must be equal")
    for name in blob_names:
        if name not in net.blobs:
            raise CaffeError(f"extract_features: unknown feature blob name {name} in the network {net.source}")
    writers = []
    try:
        for name in dataset_names:
            log.info(f"Opening dataset {name}", extra={"caffe_src": "extract_features.cpp:123"})
            writers.append(open_writer(db_type, name, "extract_features"))
        log.error("Extracting Features", extra={"caffe_src": "extract_features.cpp:130"})
        counts = [0] * len(blob_names)
        datum = caffe_pb2.Datum()
        for _ in range(int(num_mini_batches)):
            net.Forward()
            for i, name in enumerate(blob_names):
                blob = net.blobs[name]
                feats = np.asarray(backend.to_numpy(blob.data), dtype=np.float32)
                c, h, w = legacy_chw(feats.shape, f"blob '{name}'")
                feats = feats.reshape(feats.shape[0] if feats.ndim else 1, -1)
                for row in feats:
                    datum.Clear()
                    datum.channels, datum.height, datum.width = c, h, w
                    datum.float_data.extend(row.tolist())
                    writers[i].put(f"{counts[i]:010d}", datum.SerializeToString())
                    counts[i] += 1
                    if counts[i] % COMMIT_EVERY == 0:
                        log.error(f"Extracted features of {counts[i]} query images for feature blob {name}",
                                  extra={"caffe_src": "extract_features.cpp:158"})
        for i, w in enumerate(writers):
            w.close()
            log.error(f"Extracted features of {counts[i]} query images for feature blob {blob_names[i]}",
                      extra={"caffe_src": "extract_features.cpp:169"})
        writers = []
        log.error("Successfully extracted the features!", extra={"caffe_src": "extract_features.cpp:173"})
        return counts
    finally:
        for w in writers:  # stopped by an error: what was committed stays, as in Caffe
            try:
                (w.env if hasattr(w, "env") else w.db).close()
            except Exception:  # pragma: no cover - closing after a failure
                pass
