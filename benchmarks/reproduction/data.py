"""Fashion-MNIST for study 1: the quickstart's LMDBs (made here when missing, by the same library
functions ``fc-caffe convert_mnist_data`` calls) and the first-N-records subsets a form trains on."""
from __future__ import annotations

import os
import sys

#: where the Debian package dataset-fashion-mnist installs the gzipped IDX files
IDX_DIR = "/usr/share/datasets/fashion-mnist"
TRAIN_LMDB = "fashion_mnist_train_lmdb"
TEST_LMDB = "fashion_mnist_test_lmdb"


def ensure_fashion_mnist(data_dir: str, log=print) -> tuple[str, str]:
    """The train and test LMDBs under ``data_dir`` (as tools/quickstart.sh writes them), converted
    from the IDX files when missing."""
    train, test = os.path.join(data_dir, TRAIN_LMDB), os.path.join(data_dir, TEST_LMDB)
    if _has_db(train) and _has_db(test):
        return train, test
    from pycaffe_fc.data.convert import convert_mnist_data  # what fc-caffe convert_mnist_data calls
    os.makedirs(data_dir, exist_ok=True)
    for split, out in (("train", train), ("t10k", test)):
        if _has_db(out):
            continue
        images = os.path.join(IDX_DIR, f"{split}-images-idx3-ubyte.gz")
        labels = os.path.join(IDX_DIR, f"{split}-labels-idx1-ubyte.gz")
        log(f"converting {images} -> {out}")
        convert_mnist_data(images, labels, out, backend="lmdb")
    return train, test


def subset_lmdb(src: str, dst_dir: str, count: int) -> str:
    """An LMDB of the first ``count`` records of ``src`` (key order, as Caffe's Data layer reads),
    made once and reused; ``count`` at or above the size of ``src`` returns ``src`` itself."""
    from pycaffe_fc.data.db import LMDBWriter, iter_lmdb, lmdb_entries
    if count >= lmdb_entries(src):
        return os.path.abspath(src)
    dst = os.path.join(dst_dir, f"{os.path.basename(src.rstrip('/'))}_first{count}")
    if _has_db(dst):
        return os.path.abspath(dst)
    tmp = dst + ".partial"
    if os.path.exists(tmp):
        import shutil
        shutil.rmtree(tmp)
    os.makedirs(dst_dir, exist_ok=True)
    with LMDBWriter(tmp) as w:
        for i, (key, value) in enumerate(iter_lmdb(src)):
            if i >= count:
                break
            w.put(key, value)
    os.replace(tmp, dst)
    return os.path.abspath(dst)


def _has_db(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "data.mdb"))


if __name__ == "__main__":  # pragma: no cover - manual use
    print(ensure_fashion_mnist(sys.argv[1] if len(sys.argv) > 1 else "data/fashion_mnist"))
