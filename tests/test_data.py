"""The data pipeline: Datum, LMDB, the DataTransformer, the data layers, prefetching and sharding.

The BVLC Caffe Data layer outputs of ../shared/caffe-reference/data are reproduced exactly; the
rest runs on tiny databases built in tmp_path."""
from __future__ import annotations

import json

import numpy as np
import pytest
from google.protobuf import text_format

import pycaffe_fc as caffe
from pycaffe_fc.data import db as dbmod
from pycaffe_fc.data.datum import array_to_datum, datum_to_array, image_to_datum
from pycaffe_fc.data.prefetch import Prefetcher
from pycaffe_fc.data.sharding import clear_shard, plan_batch, set_shard
from pycaffe_fc.data.transformer import DataTransformer
from pycaffe_fc.errors import CaffeError
from pycaffe_fc.proto import caffe_pb2
from pycaffe_fc.proto.io import array_to_blobproto, write_proto_binary

from conftest import REF, need_shared

DATA = REF / "data"

cv2 = pytest.importorskip("cv2")


@pytest.fixture(autouse=True)
def _no_shard():
    clear_shard()
    yield
    clear_shard()


def net_from(text: str, phase=caffe.TEST):
    p = caffe_pb2.NetParameter()
    text_format.Parse(text, p)
    return caffe.Net(p, phase)


def make_lmdb(path, arrays, labels=None, encoded_images=None):
    """An LMDB of raw Datum (or encoded images) under Caffe's %08d keys."""
    with dbmod.LMDBWriter(str(path)) as w:
        items = encoded_images if encoded_images is not None else arrays
        for i, a in enumerate(items):
            lab = int(labels[i]) if labels is not None else i
            if encoded_images is not None:
                d = caffe_pb2.Datum(data=a, label=lab, encoded=True)
            else:
                d = array_to_datum(a, lab)
            w.put(f"{i:08d}", d.SerializeToString())
    return str(path)


def data_layer(source, batch, transform="", extra="", tops=("data", "label"), name="data"):
    top = "".join(f' top: "{t}"' for t in tops)
    return (f'layer {{ name: "{name}" type: "Data" {top} transform_param {{ {transform} }} '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB {extra} }} }}')


# -- Datum ------------------------------------------------------------------------------------------
def test_array_datum_roundtrip_uint8_and_float():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    d = array_to_datum(a, 7)
    assert (d.channels, d.height, d.width, d.label) == (2, 3, 4, 7)
    assert d.data == a.tobytes() and not len(d.float_data)
    np.testing.assert_array_equal(datum_to_array(d), a)
    f = np.linspace(-1, 1, 24).reshape(2, 3, 4)
    d = array_to_datum(f)
    assert not d.HasField("label") and len(d.float_data) == 24
    np.testing.assert_allclose(datum_to_array(d), f.astype(np.float32))
    with pytest.raises(ValueError):
        array_to_datum(np.zeros((2, 2)))


def test_encoded_datum_decodes_as_bgr():
    img = np.zeros((5, 6, 3), np.uint8)
    img[..., 0] = 200  # blue in OpenCV's BGR order
    ok, buf = cv2.imencode(".png", img)
    d = caffe_pb2.Datum(data=buf.tobytes(), encoded=True, label=1)
    chw = datum_to_array(d)
    assert chw.shape == (3, 5, 6) and (chw[0] == 200).all() and (chw[1:] == 0).all()
    # image_to_datum writes the raw datum Caffe's CVMatToDatum writes (encoded: false set)
    raw = image_to_datum(img, 1)
    assert raw.HasField("encoded") and not raw.encoded
    np.testing.assert_array_equal(datum_to_array(raw), chw)


def test_reference_lmdbs_decode_as_expected():
    need_shared(DATA)
    exp = np.load(DATA / "expected_decoded.npz")
    for name in ("lmdb_resize32", "lmdb_gray", "lmdb_encoded_jpg"):
        recs = list(dbmod.iter_lmdb(str(DATA / name)))
        assert len(recs) == 20
        for key, value in recs:
            d = caffe_pb2.Datum()
            d.ParseFromString(value)
            k = key.decode()
            if name == "lmdb_encoded_jpg":
                assert d.encoded and d.data == exp[f"{name}/{k}/raw"].tobytes()
            else:
                np.testing.assert_array_equal(datum_to_array(d), exp[f"{name}/{k}"])


# -- the real Caffe Data layer ----------------------------------------------------------------------
def _reference_cases():
    path = DATA / "datalayer_manifest.json"
    return sorted(json.loads(path.read_text())) if path.exists() else []


@pytest.mark.parametrize("case", _reference_cases())
def test_data_layer_matches_bvlc_caffe(case, monkeypatch):
    """Decoding, crop, mean file / mean values and scale exactly as BVLC Caffe's Data layer."""
    spec = json.loads((DATA / "datalayer_manifest.json").read_text())[case]
    exp = np.load(DATA / "datalayer_expected.npz")
    monkeypatch.chdir(DATA)  # sources and mean file are relative, as Caffe ran them
    net = net_from(spec["prototxt"], caffe.TEST if spec["phase"] == "TEST" else caffe.TRAIN)
    assert list(net.blobs["data"].shape) == spec["data_shapes"][0]  # shaped at setup
    for i in range(spec["forward_passes"]):
        net.forward()
        np.testing.assert_array_equal(net.blobs["data"].data, exp[f"{case}/pass{i:02d}/data"])
        np.testing.assert_array_equal(net.blobs["label"].data, exp[f"{case}/pass{i:02d}/label"])


# -- DataTransformer --------------------------------------------------------------------------------
def _naive(x, mean, scale, h_off, w_off, mirror, crop):
    """Caffe's Transform(Datum) loop, one pixel at a time."""
    n, c, h, w = x.shape
    oh, ow = (crop, crop) if crop else (h, w)
    out = np.zeros((n, c, oh, ow), np.float32)
    for i in range(n):
        for ch in range(c):
            for r in range(oh):
                for col in range(ow):
                    sh, sw = h_off[i] + r, w_off[i] + col
                    v = np.float32(x[i, ch, sh, sw]) - (mean[ch, sh, sw] if mean is not None else np.float32(0))
                    out[i, ch, r, ow - 1 - col if mirror[i] else col] = v * np.float32(scale)
    return out


@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST])
def test_transformer_crop_mirror_mean_file(tmp_path, phase):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 3, 9, 11), dtype=np.uint8)
    mean = rng.random((3, 9, 11), dtype=np.float32) * 255
    mf = tmp_path / "mean.binaryproto"
    write_proto_binary(array_to_blobproto(mean[None]), str(mf))
    p = caffe_pb2.TransformationParameter(crop_size=5, mirror=True, mean_file=str(mf), scale=0.25)
    t = DataTransformer(p, phase, np.random.default_rng(3))
    out = t.transform(x)
    h_off, w_off, mirror = DataTransformer(p, phase, np.random.default_rng(3)).draw(6, 9, 11)
    if phase == caffe.TEST:
        assert (h_off == 2).all() and (w_off == 3).all()
    else:
        assert len(set(zip(h_off, w_off))) > 1
    assert mirror.any() and not mirror.all()
    np.testing.assert_array_equal(out, _naive(x, mean, 0.25, h_off, w_off, mirror, 5))


def test_transformer_mean_values_and_checks(tmp_path):
    x = np.full((2, 3, 4, 4), 10, np.uint8)
    p = caffe_pb2.TransformationParameter(mean_value=[1, 2, 3])
    out = DataTransformer(p, caffe.TEST).transform(x)
    np.testing.assert_array_equal(out[:, :, 0, 0], [[9, 8, 7], [9, 8, 7]])
    one = DataTransformer(caffe_pb2.TransformationParameter(mean_value=[4], scale=0.5), caffe.TEST)
    assert (one.transform(x) == 3).all()  # one value for every channel
    with pytest.raises(CaffeError, match="mean_value"):
        DataTransformer(caffe_pb2.TransformationParameter(mean_value=[1, 2]), caffe.TEST).transform(x)
    with pytest.raises(CaffeError, match="crop_size"):
        DataTransformer(caffe_pb2.TransformationParameter(crop_size=5), caffe.TEST).transform(x)
    mf = tmp_path / "m.binaryproto"
    write_proto_binary(array_to_blobproto(np.zeros((1, 3, 5, 5))), str(mf))
    with pytest.raises(CaffeError, match="at the same time"):
        DataTransformer(caffe_pb2.TransformationParameter(mean_file=str(mf), mean_value=[1]), caffe.TEST)
    with pytest.raises(CaffeError, match="mean_file"):
        DataTransformer(caffe_pb2.TransformationParameter(mean_file=str(mf)), caffe.TEST).transform(x)


# -- Data layer ---------------------------------------------------------------------------------------
def test_data_layer_reads_in_order_and_wraps(tmp_path):
    arrays = [np.full((1, 2, 3), i, np.uint8) for i in range(5)]
    src = make_lmdb(tmp_path / "db", arrays)
    net = net_from(data_layer(src, 3, "scale: 2"))
    assert net.blobs["data"].shape == (3, 1, 2, 3) and net.blobs["label"].shape == (3,)
    seen = []
    for _ in range(4):
        net.forward()
        seen += list(net.blobs["label"].data)
        np.testing.assert_array_equal(net.blobs["data"].data[:, 0, 0, 0], 2 * net.blobs["label"].data)
    assert seen == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


def test_data_layer_float_data_and_single_top(tmp_path):
    arrays = [np.full((2, 2, 2), i + 0.5, np.float32) for i in range(3)]
    src = make_lmdb(tmp_path / "db", arrays)
    net = net_from(data_layer(src, 2, "mean_value: 0.5", tops=("data",)))
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[:, 0, 0, 0], [0, 1])


def test_data_layer_encoded_varying_sizes_batch1(tmp_path):
    imgs = [np.full((4 + i, 5, 3), 30 * i, np.uint8) for i in range(3)]
    enc = [cv2.imencode(".png", im)[1].tobytes() for im in imgs]
    src = make_lmdb(tmp_path / "db", None, encoded_images=enc)
    net = net_from(data_layer(src, 1, "force_gray: true"))
    for i in range(3):
        net.forward()
        assert net.blobs["data"].shape == (1, 1, 4 + i, 5)
        assert (net.blobs["data"].data == 30 * i).all()
    net2 = net_from(data_layer(src, 2))  # different sizes in one batch
    with pytest.raises(CaffeError, match="same size"):
        net2.forward()


def test_data_layer_errors_name_layer_and_path(tmp_path):
    missing = tmp_path / "nope_lmdb"
    with pytest.raises(CaffeError, match=r"layer 'mydata'.*nope_lmdb"):
        net_from(data_layer(str(missing), 2, name="mydata"))
    empty = tmp_path / "empty_lmdb"
    dbmod.LMDBWriter(str(empty)).close()
    with pytest.raises(CaffeError, match=r"layer 'mydata'.*empty_lmdb.*empty"):
        net_from(data_layer(str(empty), 2, name="mydata"))
    src = make_lmdb(tmp_path / "db", [np.zeros((1, 2, 2), np.uint8)])
    text = data_layer(src, 1).replace("backend: LMDB", "backend: LEVELDB")
    with pytest.raises(CaffeError, match="is an LMDB but backend LEVELDB was asked for"):
        net_from(text)
    # backend left at its LEVELDB default on an LMDB directory: read as LMDB
    net_from(data_layer(src, 1).replace("backend: LMDB", "")).forward()
    with pytest.raises(CaffeError, match="already exists"):
        dbmod.LMDBWriter(src)


def test_same_lmdb_in_two_nets_and_train_mirror_crop(tmp_path):
    x = np.arange(36, dtype=np.uint8).reshape(1, 6, 6)
    src = make_lmdb(tmp_path / "db", [x] * 4)
    caffe.set_random_seed(5)
    a = net_from(data_layer(src, 4, "crop_size: 4 mirror: true"), caffe.TRAIN)
    b = net_from(data_layer(src, 4, "crop_size: 4"))
    a.forward()
    b.forward()
    np.testing.assert_array_equal(b.blobs["data"].data[0, 0], x[0, 1:5, 1:5])  # centre crop in TEST
    outs = a.blobs["data"].data[:, 0]
    windows = {(i, j, m) for i in range(3) for j in range(3) for m in (0, 1)}
    for o in outs:
        assert any(np.array_equal(o, (x[0, i:i + 4, j:j + 4][:, ::-1] if m else x[0, i:i + 4, j:j + 4]))
                   for i, j, m in windows)
    caffe.set_random_seed(5)
    a2 = net_from(data_layer(src, 4, "crop_size: 4 mirror: true"), caffe.TRAIN)
    a2.forward()
    np.testing.assert_array_equal(a2.blobs["data"].data, a.blobs["data"].data)  # same seed, same draws


# -- sharding -----------------------------------------------------------------------------------------
def _labels_read(src, batch, iters, phase=caffe.TRAIN, name="data"):
    net = net_from(data_layer(src, batch, name=name), phase)
    out = []
    for _ in range(iters):
        net.forward()
        out.append(net.blobs["label"].data.astype(int).tolist())
    return out


def test_split_batch_sharding_reads_what_one_worker_reads(tmp_path):
    src = make_lmdb(tmp_path / "db", [np.zeros((1, 1, 1), np.uint8)] * 10)
    whole = _labels_read(src, 4, 6)
    for p in (2, 4):
        parts = []
        for r in range(p):
            set_shard(r, p)
            parts.append(_labels_read(src, 4, 6))
        clear_shard()
        for it in range(6):
            assert sum((parts[r][it] for r in range(p)), []) == whole[it]
    # one epoch of 10 records, B=10 over 2 workers: disjoint, nothing skipped
    a = (set_shard(0, 2), _labels_read(src, 10, 1))[1][0]
    b = (set_shard(1, 2), _labels_read(src, 10, 1))[1][0]
    assert sorted(a + b) == list(range(10)) and not set(a) & set(b)
    set_shard(1, 4)
    with pytest.raises(CaffeError, match=r"layer 'shardme'.*batch_size 6.*not divisible"):
        _labels_read(src, 6, 1, name="shardme")
    assert _labels_read(src, 6, 1, phase=caffe.TEST) == [[0, 1, 2, 3, 4, 5]]  # TEST is not sharded


def test_bvlc_sharding_interleaves(tmp_path):
    src = make_lmdb(tmp_path / "db", [np.zeros((1, 1, 1), np.uint8)] * 20)
    set_shard(1, 2, split_batch=False)
    assert _labels_read(src, 3, 2) == [[1, 3, 5], [7, 9, 11]]
    plan = plan_batch(3, "x", caffe.TRAIN)
    assert plan.block == 6 and plan.local_batch == 3


# -- ImageData -----------------------------------------------------------------------------------------
def _image_list(tmp_path, n=6):
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(n):
        im = np.full((6 + i % 2, 8, 3), (10 * i, 0, 255 - 10 * i), np.uint8)
        cv2.imwrite(str(tmp_path / "img" / f"im {i}.png"), im)  # a space in the name
        lines.append(f"img/im {i}.png {i}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.txt"


def image_layer(lst, root, batch, extra=""):
    return (f'layer {{ name: "img" type: "ImageData" top: "data" top: "label" '
            f'image_data_param {{ source: "{lst}" root_folder: "{root}/" batch_size: {batch} {extra} }} }}')


def test_image_data_layer(tmp_path):
    lst = _image_list(tmp_path)
    net = net_from(image_layer(lst, tmp_path, 3, "new_height: 5 new_width: 4"))
    assert net.blobs["data"].shape == (3, 3, 5, 4)
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1, 2])
    assert (net.blobs["data"].data[1, 0] == 10).all() and (net.blobs["data"].data[1, 2] == 245).all()
    grey = net_from(image_layer(lst, tmp_path, 1, "is_color: false"))
    assert grey.blobs["data"].shape == (1, 1, 6, 8)
    with pytest.raises(CaffeError, match="new_height and new_width"):
        net_from(image_layer(lst, tmp_path, 1, "new_height: 5"))
    with pytest.raises(CaffeError, match="list file"):
        net_from(image_layer(tmp_path / "missing.txt", tmp_path, 1))


def test_image_data_shuffle_epochs_and_sharded_shuffle(tmp_path):
    lst = _image_list(tmp_path)
    caffe.set_random_seed(11)
    net = net_from(image_layer(lst, tmp_path, 2, "shuffle: true new_height: 4 new_width: 4"), caffe.TRAIN)
    seen = []
    for _ in range(6):
        net.forward()
        seen += net.blobs["label"].data.astype(int).tolist()
    assert sorted(seen[:6]) == list(range(6)) and sorted(seen[6:]) == list(range(6))
    assert seen[:6] != list(range(6)) or seen[6:] != list(range(6))
    # two workers with a common shard seed together read a permutation per epoch
    per = []
    for r in range(2):
        set_shard(r, 2, seed=42)
        caffe.set_random_seed(100 + r)  # different global seeds: the shard seed keeps them aligned
        w = net_from(image_layer(lst, tmp_path, 6, "shuffle: true new_height: 4 new_width: 4"), caffe.TRAIN)
        w.forward()
        per.append(w.blobs["label"].data.astype(int).tolist())
    assert sorted(per[0] + per[1]) == list(range(6))


# -- HDF5Data ------------------------------------------------------------------------------------------
def test_hdf5_data_layer(tmp_path):
    h5py = pytest.importorskip("h5py")
    files = []
    start = 0
    for k, n in enumerate((3, 4)):
        fn = tmp_path / f"d{k}.h5"
        with h5py.File(fn, "w") as f:
            f["data"] = np.arange(start, start + n, dtype=np.float64)[:, None, None] * np.ones((1, 2, 2))
            f["label"] = np.arange(start, start + n, dtype=np.int32)
        files.append(str(fn))
        start += n
    (tmp_path / "list.txt").write_text("\n".join(files) + "\n")
    text = (f'layer {{ name: "h" type: "HDF5Data" top: "data" top: "label" '
            f'hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 5 {{}} }} }}')
    net = net_from(text.replace("{}", ""))
    assert net.blobs["data"].shape == (5, 2, 2) and net.blobs["label"].shape == (5,)
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1, 2, 3, 4])
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [5, 6, 0, 1, 2])
    np.testing.assert_array_equal(net.blobs["data"].data[:, 1, 1], [5, 6, 0, 1, 2])
    caffe.set_random_seed(2)
    sh = net_from(text.replace("{}", "shuffle: true"), caffe.TRAIN)
    seen = []
    for _ in range(14 // 5 + 1):
        sh.forward()
        seen += sh.blobs["label"].data.astype(int).tolist()
    assert sorted(seen[:7]) == list(range(7)) and sorted(seen[7:14]) == list(range(7))
    with pytest.raises(CaffeError, match="no dataset 'nolabel'"):
        net_from(text.replace("{}", "").replace('top: "label"', 'top: "nolabel"'))


# -- MemoryData ----------------------------------------------------------------------------------------
def test_memory_data_layer():
    net = net_from('layer { name: "m" type: "MemoryData" top: "data" top: "label" '
                   'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }')
    layer = net.layers[0]
    with pytest.raises(CaffeError, match="set_input_arrays"):
        net.forward()
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    with pytest.raises(CaffeError, match="multiple of batch size"):
        layer.set_input_arrays(data[:3], np.zeros(3, np.float32))
    layer.set_input_arrays(data, np.arange(4, dtype=np.float32))
    for k in (0, 2, 0):
        net.forward()
        np.testing.assert_array_equal(net.blobs["data"].data, data[k:k + 2])
        np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [k, k + 1])


# -- prefetching ---------------------------------------------------------------------------------------
def test_prefetcher_order_stats_and_errors():
    it = iter(range(5))

    def load():
        v = next(it)
        if v == 3:
            raise CaffeError("broken record 3")
        return v

    p = Prefetcher(load, count=2, name="layer 'x'")
    assert [p.next() for _ in range(3)] == [0, 1, 2]
    assert p.batches == 3 and p.wait_s >= 0
    with pytest.raises(CaffeError, match="broken record 3"):
        p.next()
    p.close()
