#!/usr/bin/env python3
"""Malformed-input sweep: how fc-caffe's CLI answers ~100 broken files.

Builds, in a temporary folder, a small net on a real LMDB, trains it once to get fc-caffe's own
snapshots (binary and HDF5), then derives a corpus of malformed inputs from them: truncated,
empty, foreign and non-Datum LMDBs; short, empty, bit-flipped and foreign weights and solver
states; corrupt BlobProtos and mean files; negative iterations; bad prototxts; allocations far
beyond the machine's memory (``pad: 100000``); bad image lists and truncated images for
convert_imageset. Each case runs as a real ``fc-caffe`` process (a few through the Python API
and under ``--gpus 2``) and is classified:

    clear     exit status non-zero, no traceback, an ``error:`` line naming the file/blob/key
    unclear   exit status non-zero, no traceback, but no error line naming what is wrong
    traceback a Python traceback was printed
    crash     killed by a signal (SIGBUS, SIGSEGV, the OOM killer...)
    silent    exit status 0: the bad input was accepted

Usage (from the repository root):

    python benchmarks/bench_malformed_inputs.py              # the whole corpus, 2 at a time
    python benchmarks/bench_malformed_inputs.py --jobs 1 --only lmdb --keep /tmp/corpus

A benchmark only: it prints a table and asserts nothing (tests/test_malformed.py tests a subset).
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CLI = [sys.executable, "-m", "pycaffe_fc"]


@dataclass
class Case:
    group: str
    name: str
    argv: list[str]           # after the fc-caffe prefix, or a full command when raw
    expect: str               # a substring the error line must contain (file, blob or key)
    raw: bool = False         # argv is a whole command (python -c, mpiexec)
    expect_ok: bool = False   # the right answer is success (with a summary), checked by `verify`
    verify: object = None     # callable(result) -> str | None (problem) for expect_ok cases
    result: dict = field(default_factory=dict)


# -- building blocks ------------------------------------------------------------------------------
def datum_bytes(rng, c=1, h=8, w=8, label=0) -> bytes:
    from pycaffe_fc.proto import caffe_pb2
    d = caffe_pb2.Datum(channels=c, height=h, width=w, label=int(label))
    d.data = rng.integers(0, 256, c * h * w, dtype=np.uint8).tobytes()
    return d.SerializeToString()


def write_lmdb(path: str, values: list[bytes], keys: list[bytes] | None = None) -> str:
    import lmdb
    env = lmdb.open(path, map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, v in enumerate(values):
            txn.put(keys[i] if keys else b"%08d" % i, v)
    env.close()
    return path


NET = """name: "tiny"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ scale: 0.00390625 {mean} }}
  data_param {{ source: "{source}" batch_size: 8 backend: LMDB }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 4 kernel_size: 3 pad: {pad} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  inner_product_param {{ num_output: {num_output} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }}
"""


def net_text(source: str, pad: int = 0, num_output: int = 10, mean: str = "") -> str:
    return NET.format(source=source, pad=pad, num_output=num_output,
                      mean=f'mean_file: "{mean}"' if mean else "")


SOLVER = """net: "{net}"
base_lr: 0.01
momentum: 0.9
lr_policy: "fixed"
max_iter: {max_iter}
display: 0
snapshot: 2
snapshot_prefix: "{prefix}"
snapshot_format: {fmt}
random_seed: 1
"""


def flip_bits(data: bytes, n: int, seed: int, lo: int = 0, hi: int | None = None) -> bytes:
    r = random.Random(seed)
    b = bytearray(data)
    hi = len(b) if hi is None else hi
    for _ in range(n):
        i = r.randrange(lo * 8, hi * 8)
        b[i // 8] ^= 1 << (i % 8)
    return bytes(b)


def write(path: str, data: bytes | str) -> str:
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


def h5_data_span(path: str) -> tuple[int, int]:
    """Byte range of the largest dataset's raw data in an HDF5 file (to flip content bits)."""
    import h5py
    best = (0, 0, 0)
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            nonlocal best
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                size = obj.id.get_storage_size()
                if size > best[2]:
                    best = (obj.id.get_offset(), obj.id.get_offset() + size, size)
        f.visititems(visit)
    return best[0], best[1]


# -- the corpus -----------------------------------------------------------------------------------
def build_corpus(d: str) -> list[Case]:
    import cv2
    from pycaffe_fc.proto import caffe_pb2
    from pycaffe_fc.proto.io import array_to_blobproto

    rng = np.random.default_rng(0)
    good_db = write_lmdb(os.path.join(d, "good_lmdb"),
                         [datum_bytes(rng, label=i % 10) for i in range(64)])
    good_net = write(os.path.join(d, "good.prototxt"), net_text(good_db))
    cases: list[Case] = []

    def net_on(source: str, name: str, **kw) -> str:
        return write(os.path.join(d, f"net_{name}.prototxt"), net_text(source, **kw))

    def solver_for(net: str, name: str, fmt: str = "BINARYPROTO", max_iter: int = 2) -> str:
        return write(os.path.join(d, f"solver_{name}.prototxt"),
                     SOLVER.format(net=net, max_iter=max_iter, prefix=os.path.join(d, f"snap_{name}"), fmt=fmt))

    # fc-caffe's own snapshots, binary and HDF5, from real runs
    for fmt in ("BINARYPROTO", "HDF5"):
        r = subprocess.run(CLI + ["train", "--solver", solver_for(good_net, fmt.lower(), fmt)],
                           capture_output=True, text=True, cwd=d)
        if r.returncode:
            raise SystemExit(f"setup: training the good net failed:\n{r.stderr[-2000:]}")
    model = os.path.join(d, "snap_binaryproto_iter_2.caffemodel")
    state = os.path.join(d, "snap_binaryproto_iter_2.solverstate")
    model_h5 = os.path.join(d, "snap_hdf5_iter_2.caffemodel.h5")
    state_h5 = os.path.join(d, "snap_hdf5_iter_2.solverstate.h5")
    model_raw, state_raw = open(model, "rb").read(), open(state, "rb").read()
    model_h5_raw, state_h5_raw = open(model_h5, "rb").read(), open(state_h5, "rb").read()
    train_solver = solver_for(good_net, "resume")

    def test_cmd(net: str, weights: str = model) -> list[str]:
        return ["test", "--model", net, "--weights", weights, "--iterations", "1"]

    def add(group, name, argv, expect, **kw):
        cases.append(Case(group, name, argv, expect, **kw))

    # ---- LMDBs ----------------------------------------------------------------------------------
    mdb = open(os.path.join(good_db, "data.mdb"), "rb").read()

    def broken_db(name: str, data: bytes | None, files: dict | None = None) -> str:
        p = os.path.join(d, name)
        os.makedirs(p)
        if data is not None:
            write(os.path.join(p, "data.mdb"), data)
        for fname, content in (files or {}).items():
            write(os.path.join(p, fname), content)
        return p

    for frac, label in ((0.5, "half"), (0.1, "tenth"), (0.9, "nine_tenths")):
        db = broken_db(f"trunc_{label}_lmdb", mdb[:int(len(mdb) * frac)])
        add("lmdb", f"truncated data.mdb ({label}), test", test_cmd(net_on(db, f"trunc_{label}")), "data.mdb")
    db = broken_db("trunc_page_lmdb", mdb[:len(mdb) - 4096])
    add("lmdb", "data.mdb one page short, test", test_cmd(net_on(db, "trunc_page")), "data.mdb")
    add("lmdb", "data.mdb one page short, train",
        ["train", "--solver", solver_for(net_on(db, "trunc_page_train"), "trunc_page")], "data.mdb")
    add("lmdb", "data.mdb one page short, compute_image_mean",
        ["compute_image_mean", db, os.path.join(d, "m.binaryproto")], "data.mdb")
    add("lmdb", "data.mdb one page short, Python API",
        [sys.executable, "-c", "import sys, pycaffe_fc as caffe\n"
         "try:\n    caffe.Net(sys.argv[1], caffe.TEST).forward()\n"
         "except caffe.CaffeError as e:\n    print('error:', e, file=sys.stderr); sys.exit(1)\n",
         net_on(db, "trunc_api")], "data.mdb", raw=True)
    if shutil.which("mpiexec"):
        add("lmdb", "data.mdb one page short, train --gpus 2",
            ["train", "--solver", solver_for(net_on(db, "trunc_mpi"), "trunc_mpi"), "--gpus", "2"], "data.mdb")
    db = broken_db("empty_mdb_lmdb", b"")
    add("lmdb", "0-byte data.mdb", test_cmd(net_on(db, "empty_mdb")), "data.mdb")
    db = broken_db("random_mdb_lmdb", rng.integers(0, 256, 65536, dtype=np.uint8).tobytes())
    add("lmdb", "random bytes as data.mdb", test_cmd(net_on(db, "random_mdb")), "data.mdb")
    db = broken_db("text_mdb_lmdb", b"this is not a database\n" * 1000)
    add("lmdb", "text file as data.mdb", test_cmd(net_on(db, "text_mdb")), "data.mdb")
    db = broken_db("no_mdb_lmdb", None)
    add("lmdb", "directory without data.mdb", test_cmd(net_on(db, "no_mdb")), "no_mdb_lmdb")
    db = broken_db("leveldb_like", None, {"CURRENT": "MANIFEST-000002\n", "LOG": "", "000003.log": b"\0" * 100})
    add("lmdb", "LevelDB-like directory as LMDB", test_cmd(net_on(db, "leveldb_like")), "leveldb_like")
    add("lmdb", "source is a file", test_cmd(net_on(good_net, "file_source")), "good.prototxt")
    add("lmdb", "source does not exist", test_cmd(net_on(os.path.join(d, "nowhere"), "nowhere")), "nowhere")
    empty = os.path.join(d, "empty_lmdb")
    write_lmdb(empty, [])
    add("lmdb", "empty LMDB (0 records)", test_cmd(net_on(empty, "empty")), "empty_lmdb")
    add("lmdb", "empty LMDB, compute_image_mean", ["compute_image_mean", empty, os.path.join(d, "m2.binaryproto")],
        "empty_lmdb")
    for name, values in (("random_values", [rng.integers(0, 256, 100, dtype=np.uint8).tobytes() for _ in range(16)]),
                         ("text_values", [b"label=3 pixels=0,0,0,0" for _ in range(16)]),
                         ("netparam_values", [caffe_pb2.NetParameter(name="x").SerializeToString()] * 16),
                         ("empty_values", [b""] * 16)):
        db = write_lmdb(os.path.join(d, f"{name}_lmdb"), values)
        add("lmdb", f"LMDB of non-Datum values ({name}), test", test_cmd(net_on(db, name)), f"{name}_lmdb")
    db = write_lmdb(os.path.join(d, "random_values2_lmdb"),
                    [rng.integers(0, 256, 100, dtype=np.uint8).tobytes() for _ in range(16)])
    add("lmdb", "LMDB of non-Datum values, train", ["train", "--solver", solver_for(net_on(db, "rv2"), "rv2")],
        "random_values2_lmdb")
    add("lmdb", "LMDB of non-Datum values, compute_image_mean",
        ["compute_image_mean", db, os.path.join(d, "m3.binaryproto")], "random_values2_lmdb")
    mixed = [datum_bytes(rng) for _ in range(3)] + [b"\xff\xfe garbage"] + [datum_bytes(rng) for _ in range(12)]
    db = write_lmdb(os.path.join(d, "mixed_lmdb"), mixed)
    add("lmdb", "one non-Datum record among Datum", test_cmd(net_on(db, "mixed")), "00000003")
    short = caffe_pb2.Datum(channels=1, height=8, width=8, data=b"\0" * 10)
    db = write_lmdb(os.path.join(d, "short_datum_lmdb"), [short.SerializeToString()] * 16)
    add("lmdb", "Datum with too few pixels", test_cmd(net_on(db, "short_datum")), "00000000")
    enc = caffe_pb2.Datum(encoded=True, data=b"\xff\xd8 not a jpeg", label=1)
    db = write_lmdb(os.path.join(d, "bad_encoded_lmdb"), [enc.SerializeToString()] * 16)
    add("lmdb", "encoded Datum that is no image", test_cmd(net_on(db, "bad_encoded")), "00000000")
    db = write_lmdb(os.path.join(d, "sizes_lmdb"), [datum_bytes(rng, h=8 + (i % 2)) for i in range(16)])
    add("lmdb", "records of two sizes in a batch", test_cmd(net_on(db, "sizes")), "00000001")

    # ---- weights ----------------------------------------------------------------------------
    def weights_case(name: str, data: bytes, expect: str | None = None, suffix: str = ".caffemodel"):
        p = write(os.path.join(d, f"w_{name}{suffix}"), data)
        add("weights", name, test_cmd(good_net, p), expect or os.path.basename(p))

    weights_case("empty", b"")
    weights_case("truncated_half", model_raw[:len(model_raw) // 2])
    weights_case("truncated_1byte", model_raw[:-1])
    weights_case("truncated_100bytes", model_raw[:100])
    weights_case("one_byte_extra", model_raw + b"\0")
    for seed in range(4):
        weights_case(f"20_flipped_bits_{seed}", flip_bits(model_raw, 20, seed))
    weights_case("1_flipped_bit", flip_bits(model_raw, 1, 99))
    weights_case("random_bytes", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    weights_case("prototxt_as_weights", open(good_net, "rb").read())
    weights_case("solverstate_as_weights", state_raw)
    # Caffe-style files (no checksum): what BVLC's parser reads, damaged in ways it would accept
    plain = caffe_pb2.NetParameter()
    plain.ParseFromString(model_raw)
    plain.ClearField("fc_checksum")
    plain.ClearField("fc_checksummed_bytes")
    bad = caffe_pb2.NetParameter()
    bad.CopyFrom(plain)
    conv = [lp for lp in bad.layer if lp.name == "conv1"][0]
    del conv.blobs[0].data[len(conv.blobs[0].data) // 2:]
    weights_case("caffe_style_short_blob", bad.SerializeToString(), "conv1")
    bad.CopyFrom(plain)
    conv = [lp for lp in bad.layer if lp.name == "conv1"][0]
    del conv.blobs[1:]
    weights_case("caffe_style_missing_blob", bad.SerializeToString(), "conv1")
    bad.CopyFrom(plain)
    ip = [lp for lp in bad.layer if lp.name == "ip1"][0]
    ip.blobs[0].shape.dim[0] = 11
    weights_case("caffe_style_wrong_shape", bad.SerializeToString(), "ip1")
    raw = plain.SerializeToString()
    weights_case("caffe_style_truncated", raw[:len(raw) * 2 // 3])
    weights_case("caffe_style_zero_layers", caffe_pb2.NetParameter(name="tiny").SerializeToString())
    add("weights", "weights path is a directory", test_cmd(good_net, d), os.path.basename(d))
    add("weights", "weights file missing", test_cmd(good_net, os.path.join(d, "missing.caffemodel")),
        "missing.caffemodel")
    weights_case("h5_empty", b"", suffix=".caffemodel.h5")
    weights_case("h5_truncated", model_h5_raw[:len(model_h5_raw) // 2], suffix=".caffemodel.h5")
    lo, hi = h5_data_span(model_h5)
    for seed in range(2):
        weights_case(f"h5_20_flipped_data_bits_{seed}", flip_bits(model_h5_raw, 20, seed, lo, hi),
                     suffix=".caffemodel.h5")
    weights_case("h5_random_bytes", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), suffix=".caffemodel.h5")
    import h5py
    p = os.path.join(d, "w_h5_no_layers.caffemodel.h5")
    with h5py.File(p, "w") as f:
        f.create_group("data")
    add("weights", "h5_no_layers", test_cmd(good_net, p), os.path.basename(p))
    p = os.path.join(d, "w_h5_no_data.caffemodel.h5")
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    add("weights", "h5_no_data_group", test_cmd(good_net, p), os.path.basename(p))

    # ---- solver states ------------------------------------------------------------------------
    def resume(name: str, data: bytes, expect: str | None = None, suffix: str = ".solverstate",
               solver: str = train_solver):
        p = write(os.path.join(d, f"s_{name}{suffix}"), data)
        add("state", name, ["train", "--solver", solver, "--snapshot", p], expect or os.path.basename(p))

    resume("empty", b"")
    resume("truncated_half", state_raw[:len(state_raw) // 2])
    resume("truncated_1byte", state_raw[:-1])
    for seed in range(3):
        resume(f"20_flipped_bits_{seed}", flip_bits(state_raw, 20, seed))
    resume("random_bytes", rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    st = caffe_pb2.SolverState()
    st.ParseFromString(state_raw)
    st.ClearField("fc_checksum")
    st.ClearField("fc_checksummed_bytes")

    def edited(fn) -> bytes:
        s = caffe_pb2.SolverState()
        s.CopyFrom(st)
        fn(s)
        return s.SerializeToString()

    resume("negative_iter", edited(lambda s: setattr(s, "iter", -5)))
    resume("negative_current_step", edited(lambda s: setattr(s, "current_step", -1)))
    resume("short_history_blob", edited(lambda s: s.history[0].data.__delitem__(slice(3, None))), "history blob 0")
    resume("missing_history", edited(lambda s: s.history.__delitem__(slice(1, None))))
    resume("learned_net_missing", edited(lambda s: setattr(s, "learned_net", "nowhere.caffemodel")),
           "nowhere.caffemodel")
    flipped_model = write(os.path.join(d, "flipped_for_state.caffemodel"), flip_bits(model_raw, 20, 7))
    resume("learned_net_flipped", edited(lambda s: setattr(s, "learned_net", flipped_model)),
           "flipped_for_state.caffemodel")
    resume("caffemodel_as_state", model_raw)
    resume("h5_empty", b"", suffix=".solverstate.h5")
    resume("h5_truncated", state_h5_raw[:len(state_h5_raw) // 2], suffix=".solverstate.h5")
    lo, hi = h5_data_span(state_h5)
    resume("h5_20_flipped_data_bits", flip_bits(state_h5_raw, 20, 3, lo, hi), suffix=".solverstate.h5")
    for seed in range(2):  # anywhere: HDF5 itself may hang on damaged metadata, if it gets to parse it
        resume(f"h5_20_flipped_bits_{seed}", flip_bits(state_h5_raw, 20, 10 + seed), suffix=".solverstate.h5")
    for name, fn in (("h5_negative_iter", lambda f: f["iter"].__setitem__(..., -5)),
                     ("h5_no_history", lambda f: f.__delitem__("history"))):
        p = os.path.join(d, f"s_{name}.solverstate.h5")
        # a copy without fc-caffe's checksum block, as Caffe writes them, then edited by hand
        with h5py.File(state_h5, "r") as src, h5py.File(p, "w") as f:
            for key in src:
                src.copy(key, f)
            fn(f)
        add("state", name, ["train", "--solver", train_solver, "--snapshot", p], os.path.basename(p))

    # ---- mean files and other BlobProtos -------------------------------------------------------
    mean_bp = array_to_blobproto(np.zeros((1, 1, 8, 8), np.float32)).SerializeToString()
    for name, data in (("empty", b""), ("truncated", mean_bp[:len(mean_bp) // 2]),
                       ("random", rng.integers(0, 256, 300, dtype=np.uint8).tobytes()),
                       ("short_data", array_to_blobproto(np.zeros((1, 1, 8, 8), np.float32))
                        .SerializeToString()[:-60]),
                       ("wrong_shape", array_to_blobproto(np.zeros((1, 3, 5, 5), np.float32)).SerializeToString())):
        p = write(os.path.join(d, f"mean_{name}.binaryproto"), data)
        add("mean", f"mean_file {name}", test_cmd(net_on(good_db, f"mean_{name}", mean=p)), os.path.basename(p))

    # ---- prototxts and sizes ---------------------------------------------------------------------
    def proto_case(name: str, text: str | bytes, expect: str | None = None, weights: str = model):
        p = write(os.path.join(d, f"bad_{name}.prototxt"), text)
        add("prototxt", name, test_cmd(p, weights), expect or os.path.basename(p))

    base = net_text(good_db)
    proto_case("syntax_error", base.replace("top: \"conv1\"", "top: \"conv1\" {"))
    proto_case("unknown_field", base.replace("kernel_size: 3", "kernel_size: 3 kernal: 4"))
    proto_case("unknown_layer_type", base.replace('type: "Pooling"', 'type: "Poolling"'), "Poolling")
    proto_case("missing_bottom", base.replace('bottom: "pool1"', 'bottom: "pool9"'), "pool9")
    proto_case("not_utf8", base.encode() + b"\xff\xfe\n")
    proto_case("binary_as_text", model_raw[:2000])
    proto_case("empty_net", "")
    proto_case("comments_only_net", "# name: \"tiny\"\n")
    proto_case("kernel_size_0", base.replace("kernel_size: 3", "kernel_size: 0"), "conv1")
    proto_case("stride_0", base.replace("stride: 2", "stride: 0"), "pool1")
    proto_case("bad_enum", base.replace("pool: MAX", "pool: MAXIMUM"))
    proto_case("pad_100000", net_text(good_db, pad=100000), "conv1", weights=model)
    proto_case("num_output_1e9", net_text(good_db, num_output=1000000000), "ip1")
    proto_case("batch_size_1e8", base.replace("batch_size: 8", "batch_size: 100000000"), "data")
    proto_case("negative_batch", base.replace("batch_size: 8", "batch_size: -8"))
    p = write(os.path.join(d, "solver_pad.prototxt"),
              SOLVER.format(net=net_on(good_db, "pad_train", pad=100000), max_iter=2,
                            prefix=os.path.join(d, "snap_pad"), fmt="BINARYPROTO"))
    add("prototxt", "pad_100000, train", ["train", "--solver", p], "conv1")
    p = write(os.path.join(d, "solver_bad.prototxt"), "base_lr: 0.01\nlr_policy: \"fixed\"\nmax_iter: 2\n")
    add("prototxt", "solver without a net", ["train", "--solver", p], "net")
    p = write(os.path.join(d, "solver_enum.prototxt"),
              SOLVER.format(net=good_net, max_iter=2, prefix=os.path.join(d, "x"), fmt="BINARYPROTOO"))
    add("prototxt", "solver bad enum", ["train", "--solver", p], os.path.basename(p))
    p = write(os.path.join(d, "solver_nofile.prototxt"),
              SOLVER.format(net=os.path.join(d, "no_net.prototxt"), max_iter=2, prefix=os.path.join(d, "x"),
                            fmt="BINARYPROTO"))
    add("prototxt", "solver names a missing net", ["train", "--solver", p], "no_net.prototxt")

    # ---- convert_imageset ------------------------------------------------------------------------
    img_dir = os.path.join(d, "images")
    os.makedirs(img_dir)
    img = (rng.integers(0, 256, (48, 64, 3))).astype(np.uint8)
    img = cv2.GaussianBlur(img, (5, 5), 0)
    ok, jpg = cv2.imencode(".jpg", img)
    jpg = jpg.tobytes()
    ok, png = cv2.imencode(".png", img)
    png = png.tobytes()
    write(os.path.join(img_dir, "good.jpg"), jpg)
    write(os.path.join(img_dir, "good.png"), png)
    write(os.path.join(img_dir, "half.jpg"), jpg[:len(jpg) // 2])
    write(os.path.join(img_dir, "almost.jpg"), jpg[:-2])
    write(os.path.join(img_dir, "half.png"), png[:len(png) // 2])
    write(os.path.join(img_dir, "crc.png"), flip_bits(png, 3, 1, 60, len(png) - 20))
    write(os.path.join(img_dir, "junk.jpg"), b"not an image at all")
    write(os.path.join(img_dir, "empty.jpg"), b"")
    n_db = [0]

    def convert(name: str, lines: str, expect: str, **kw):
        lst = write(os.path.join(d, f"list_{name}.txt"), lines)
        n_db[0] += 1
        add("convert", name, ["convert_imageset", img_dir + "/", lst, os.path.join(d, f"conv_db_{n_db[0]}")],
            expect, **kw)

    convert("non_numeric_label", "good.jpg zero\n", "list_non_numeric_label.txt:1")
    convert("missing_label", "good.jpg 1\ngood.png\n", "list_missing_label.txt:2")
    convert("label_overflow", "good.jpg 99999999999\n", "list_label_overflow.txt:1")
    convert("float_label", "good.jpg 1.5\n", "list_float_label.txt:1")
    convert("empty_list", "", "list_empty_list.txt")
    add("convert", "list file missing", ["convert_imageset", img_dir + "/", os.path.join(d, "nolist.txt"),
                                         os.path.join(d, "conv_db_x")], "nolist.txt")
    convert("all_missing", "a.jpg 0\nb.jpg 1\n", "list_all_missing.txt")
    convert("only_half_jpeg", "half.jpg 0\n", "list_only_half_jpeg.txt")
    convert("only_almost_jpeg", "almost.jpg 0\n", "list_only_almost_jpeg.txt")
    convert("only_half_png", "half.png 0\n", "list_only_half_png.txt")
    convert("only_crc_png", "crc.png 0\n", "list_only_crc_png.txt")
    convert("only_junk", "junk.jpg 0\nempty.jpg 1\n", "list_only_junk.txt")

    def stored_only_good(case: Case) -> str | None:
        import lmdb
        db = case.argv[-1]
        env = lmdb.open(db, readonly=True, lock=False)
        with env.begin() as txn:
            keys = [k.decode() for k, _ in txn.cursor()]
        env.close()
        if any("half" in k or "almost" in k or "crc" in k for k in keys):
            return f"stored a damaged image: {keys}"
        if "skipped" not in case.result.get("stderr", ""):
            return "no summary of skipped images"
        return None

    convert("good_and_truncated", "good.jpg 0\nhalf.jpg 1\ngood.png 2\nalmost.jpg 3\nhalf.png 4\ncrc.png 5\n",
            "", expect_ok=True, verify=stored_only_good)
    return cases


# -- running and classifying --------------------------------------------------------------------------
_ERROR_LINE = re.compile(r"(^|\s)error:|Error:|^fc-caffe [\w-]+: error")


def run_case(case: Case, cwd: str, timeout: float) -> Case:
    cmd = case.argv if case.raw else CLI + case.argv
    if not case.raw and "--gpus" in case.argv:
        cmd = CLI + case.argv
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                           env=dict(os.environ, PYTHONFAULTHANDLER=""))
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = None, e.stdout or "", e.stderr or ""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        err = err.decode(errors="replace") if isinstance(err, bytes) else err
    case.result = {"rc": rc, "stdout": out, "stderr": err, "seconds": time.perf_counter() - t0}
    case.result["verdict"], case.result["line"] = classify(case)
    return case


def classify(case: Case) -> tuple[str, str]:
    r = case.result
    rc, text = r["rc"], r["stdout"] + r["stderr"]
    errors = [ln.strip() for ln in text.splitlines() if _ERROR_LINE.search(ln)]
    line = errors[0] if errors else (text.strip().splitlines() or [""])[-1]
    if rc is None:
        return "timeout", line
    if "Traceback (most recent call last)" in text:
        return "traceback", line
    if rc < 0 or rc >= 128 or any(s in text for s in ("Bus error", "Segmentation fault", "core dumped")):
        return "crash", f"exit {rc}: {line}"
    if case.expect_ok:
        if rc != 0:
            return "unclear", line
        problem = case.verify(case) if case.verify else None
        return ("silent", problem) if problem else ("clear", "ok: " + _summary(text))
    if rc == 0:
        return "silent", line
    if not errors:
        return "unclear", line
    if case.expect and not any(case.expect in e for e in errors):
        return "unclear", f"{line} (does not name '{case.expect}')"
    if len(set(_strip_rank(e) for e in errors)) > 1:
        return "unclear", f"{len(errors)} different error lines: {line}"
    return "clear", line


def _strip_rank(line: str) -> str:
    return re.sub(r"rank \d+: ", "", line)


def _summary(text: str) -> str:
    lines = [ln for ln in text.splitlines() if "onverted" in ln]
    return lines[-1].strip() if lines else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    ap.add_argument("--only", default="", help="run only the groups named (comma list): "
                    "lmdb,weights,state,mean,prototxt,convert")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per case")
    ap.add_argument("--keep", default="", help="build the corpus in this folder and keep it")
    ap.add_argument("--verbose", action="store_true", help="print every case's line")
    args = ap.parse_args()
    d = args.keep or tempfile.mkdtemp(prefix="fc_malformed_")
    os.makedirs(d, exist_ok=True)
    t0 = time.perf_counter()
    try:
        cases = build_corpus(d)
        if args.only:
            groups = set(args.only.split(","))
            cases = [c for c in cases if c.group in groups]
        print(f"{len(cases)} malformed inputs (corpus built in {time.perf_counter() - t0:.0f} s)\n")
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            done = list(pool.map(lambda c: run_case(c, d, args.timeout), cases))
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    verdicts = ("clear", "unclear", "traceback", "crash", "silent", "timeout")
    groups = sorted({c.group for c in done}, key=[c.group for c in done].index)
    print(f"{'group':<10}" + "".join(f"{v:>10}" for v in verdicts) + f"{'total':>8}")
    for g in groups + ["all"]:
        sel = [c for c in done if g in ("all", c.group)]
        print(f"{g:<10}" + "".join(f"{sum(c.result['verdict'] == v for c in sel):>10}" for v in verdicts)
              + f"{len(sel):>8}")
    bad = [c for c in done if c.result["verdict"] != "clear"]
    if bad:
        print("\nnot clear:")
        for c in bad:
            print(f"  [{c.result['verdict']}] {c.group}: {c.name}: {c.result['line'][:200]}")
    if args.verbose:
        print("\nevery case:")
        for c in done:
            print(f"  [{c.result['verdict']}] {c.group}: {c.name} ({c.result['seconds']:.1f} s): "
                  f"{c.result['line'][:220]}")
    print(f"\n{len(done)} cases in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
