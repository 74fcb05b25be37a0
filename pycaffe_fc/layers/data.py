"""Data layers: Data (LMDB of Datum), ImageData (list file of images), HDF5Data, MemoryData.

As Caffe's BasePrefetchingDataLayer, Data and ImageData load batches on a background thread
(``data_param.prefetch`` of them ahead) and transform them with the DataTransformer; their tops
take the shape of the first record at setup and of each batch's first record at every forward
(so batch-1 layers accept images of varying size). When data-parallel sharding is set
(``pycaffe_fc.data.sharding.set_shard``) each worker reads its share of every batch.
"""
from __future__ import annotations

import weakref

import numpy as np

from ..data import db as dbmod
from ..data.datum import datum_pixels, read_image
from ..data.prefetch import Prefetcher, map_decode
from ..data.sharding import plan_batch, shuffle_seed
from ..data.stream import FileRowStream, IndexStream, read_list_file
from ..data.transformer import DataTransformer
from ..errors import CaffeError
from ..proto import caffe_pb2
from ..rng import get_rng
from .base import Layer, register


def _layer_rng() -> np.random.Generator:
    # InternalThread::StartInternalThread seeds the prefetch thread from caffe_rng_rand(), so runs
    # with the same random_seed draw the same crops and mirrors
    return np.random.default_rng(int(get_rng().integers(0, 2**63)))


def _shutdown(prefetcher: Prefetcher | None, closeable) -> None:
    if prefetcher is not None:
        prefetcher.close()
    if closeable is not None:
        closeable.close()


class BasePrefetchingDataLayer(Layer):
    """BasePrefetchingDataLayer: tops (data[, label]) filled from batches a thread prefetches."""

    exact_num_bottom = 0
    min_top = 1
    max_top = 2

    prefetcher: Prefetcher | None = None

    def setup(self, bottom, top):
        self.output_labels = len(top) > 1
        self.rng = _layer_rng()
        self.transformer = DataTransformer(self.layer_param.transform_param, self.phase, self.rng,
                                           what=f"layer '{self.name}'")
        loader, closeable, data_shape = self.data_layer_setup()
        top[0].reshape(data_shape)
        if self.output_labels:
            top[1].reshape((data_shape[0],))
        count = self.layer_param.data_param.prefetch if self.layer_param.HasField("data_param") else 4
        self.prefetcher = Prefetcher(loader, count, name=f"layer '{self.name}'")
        self._finalizer = weakref.finalize(self, _shutdown, self.prefetcher, closeable)

    def data_layer_setup(self):
        """Open the source; return (loader callable, object to close, top shape)."""
        raise NotImplementedError

    def reshape(self, bottom, top):
        pass  # tops take each batch's shape in forward, as Caffe's Forward_cpu does

    def forward(self, bottom, top):
        data, label = self.prefetcher.next()
        top[0].reshape(data.shape)
        top[0].set_data(self.xp.asarray(data))
        if self.output_labels:
            top[1].reshape(label.shape)
            top[1].set_data(self.xp.asarray(label))

    def close(self) -> None:
        """Stop the prefetch thread and close the source now."""
        self._finalizer()


# -- Data ------------------------------------------------------------------------------------------
class _DatumLoader:
    """Reads this worker's records of each block of the LMDB stream, decodes and transforms them."""

    def __init__(self, stream: dbmod.LMDBStream, plan, transformer: DataTransformer, what: str) -> None:
        self.stream = stream
        self.plan = plan
        self.transformer = transformer
        self.what = what
        self.iteration = 0

    def __call__(self):
        positions = self.plan.positions(self.iteration)
        self.iteration += 1
        records = [self.stream.value_at(int(q)) for q in positions]
        t = self.transformer

        def pixels(rec):
            key, value = rec
            d = caffe_pb2.Datum()
            d.ParseFromString(value)
            where = f"{self.what}: record '{key.decode(errors='replace')}'"
            return datum_pixels(d, t.force_color, t.force_gray, what=where), d.label

        # encoded images decode on the pool (OpenCV releases the GIL); raw ones are just copied
        if any(_maybe_encoded(v) for _, v in records):
            out = map_decode(pixels, records)
        else:
            out = [pixels(r) for r in records]
        imgs = [p for p, _ in out]
        _check_same_shape(imgs, [k for k, _ in records], self.what)
        data = t.transform(np.stack(imgs))
        labels = np.asarray([lab for _, lab in out], dtype=np.float32)
        return data, labels


def _maybe_encoded(value: bytes) -> bool:
    # Datum field 7 (encoded) is serialised last as bytes 0x38 0x01 when true
    return value[-2:] == b"\x38\x01"


def _check_same_shape(imgs, names, what: str) -> None:
    s0 = imgs[0].shape
    for img, name in zip(imgs, names):
        if img.shape != s0:
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            raise CaffeError(f"{what}: record '{name}' has shape {list(img.shape)} but the batch's first has "
                             f"{list(s0)}; all records of a batch must have the same size (use batch_size 1, "
                             "a crop or resized images)")


@register("Data")
class DataLayer(BasePrefetchingDataLayer):
    """DataLayer: Datum records of an LMDB (``data_param.source``) in key order, restarting at the end."""

    def data_layer_setup(self):
        p = self.layer_param.data_param
        what = f"layer '{self.name}'"
        dbmod.resolve_backend(p.backend, p.source, what, explicit=p.HasField("backend"))
        plan = plan_batch(p.batch_size, self.name, self.phase)
        stream = dbmod.LMDBStream(p.source, what)
        d = caffe_pb2.Datum()
        d.ParseFromString(stream.first_value())
        t = self.transformer
        # force_color/force_gray act on encoded records only (Caffe logs that and goes on)
        shape = t.infer_shape(datum_pixels(d, t.force_color, t.force_gray, what=what).shape)
        self.stream = stream
        self.plan = plan
        return _DatumLoader(stream, plan, t, what), stream, (plan.local_batch,) + shape


# -- ImageData -------------------------------------------------------------------------------------
class _ImageLoader:
    def __init__(self, lines, root, new_h, new_w, is_color, stream: IndexStream, plan,
                 transformer: DataTransformer, what: str) -> None:
        self.names = [n for n, _ in lines]
        self.labels = np.asarray([lab for _, lab in lines], dtype=np.float32)
        self.root, self.new_h, self.new_w, self.is_color = root, new_h, new_w, is_color
        self.stream, self.plan, self.transformer, self.what = stream, plan, transformer, what

    def load(self, i: int) -> np.ndarray:
        img = read_image(self.root + self.names[i], self.new_h, self.new_w, self.is_color)
        if img is None:
            raise CaffeError(f"{self.what}: could not load {self.root + self.names[i]}")
        return img

    def __call__(self):
        ids = self.stream.take(self.plan.block)[self.plan.offsets]
        imgs = map_decode(self.load, [int(i) for i in ids])
        _check_same_shape(imgs, [self.names[i] for i in ids], self.what)
        return self.transformer.transform_hwc(np.stack(imgs)), self.labels[ids]


@register("ImageData")
class ImageDataLayer(BasePrefetchingDataLayer):
    """ImageDataLayer: images named in a list file ("path label" lines) under root_folder, read by
    OpenCV in colour (BGR) or grey, optionally resized and shuffled (again at each wrap-around)."""

    exact_num_top = 2
    min_top = max_top = -1

    def data_layer_setup(self):
        p = self.layer_param.image_data_param
        what = f"layer '{self.name}'"
        nh, nw = int(p.new_height), int(p.new_width)
        if (nh == 0) != (nw == 0):
            raise CaffeError(f"{what}: new_height and new_width must be set together")
        lines = read_list_file(p.source, what)
        if not lines:
            raise CaffeError(f"{what}: list file '{p.source}' is empty")
        plan = plan_batch(p.batch_size, self.name, self.phase)
        shuffle_rng = np.random.default_rng(shuffle_seed(self.name, get_rng())) if p.shuffle else None
        skip = 0
        if p.rand_skip:
            skip = int(get_rng().integers(0, 2**32)) % int(p.rand_skip)
            if skip >= len(lines):
                raise CaffeError(f"{what}: not enough images ({len(lines)}) to skip {skip}")
        stream = IndexStream(len(lines), bool(p.shuffle), shuffle_rng, start=skip)
        loader = _ImageLoader(lines, p.root_folder, nh, nw, bool(p.is_color), stream, plan,
                              self.transformer, what)
        first = loader.load(int(stream.order[skip]))
        shape = self.transformer.infer_shape((first.shape[2], first.shape[0], first.shape[1]))
        self.lines = lines
        self.plan = plan
        return loader, None, (plan.local_batch,) + shape


# -- HDF5Data --------------------------------------------------------------------------------------
def _read_hdf5_list(path: str, what: str) -> list[str]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            names = f.read().split()
    except OSError as e:
        raise CaffeError(f"{what}: cannot open source '{path}' ({e.strerror})") from None
    if not names:
        raise CaffeError(f"{what}: source '{path}' must list at least one HDF5 file")
    return names


@register("HDF5Data")
class HDF5DataLayer(Layer):
    """HDF5DataLayer: datasets named like the tops, from the .h5 files listed in ``source``; rows
    in order or shuffled (file order per epoch, rows per load). Values are read as float."""

    exact_num_bottom = 0
    min_top = 1
    _cache_size = 2

    def setup(self, bottom, top):
        import h5py
        p = self.layer_param.hdf5_data_param
        what = f"layer '{self.name}'"
        self._what = what
        self.files = _read_hdf5_list(p.source, what)
        self.top_names = list(self.layer_param.top)
        rows, trailing = [], None
        for fn in self.files:
            try:
                with h5py.File(fn, "r") as f:
                    shapes = []
                    for name in self.top_names:
                        if name not in f:
                            raise CaffeError(f"{what}: HDF5 file '{fn}' has no dataset '{name}'")
                        shapes.append(tuple(f[name].shape))
            except OSError as e:
                raise CaffeError(f"{what}: cannot open HDF5 file '{fn}' ({e})") from None
            if any(len(s) < 1 for s in shapes):
                raise CaffeError(f"{what}: HDF5 file '{fn}': datasets need at least 1 axis")
            n = shapes[0][0]
            if any(s[0] != n for s in shapes):
                raise CaffeError(f"{what}: HDF5 file '{fn}': datasets have different numbers of rows "
                                 f"{[s[0] for s in shapes]}")
            if n == 0:
                raise CaffeError(f"{what}: HDF5 file '{fn}' has no rows")
            tr = [s[1:] for s in shapes]
            if trailing is None:
                trailing = tr
            elif tr != trailing:
                raise CaffeError(f"{what}: HDF5 file '{fn}': dataset shapes {tr} differ from the first file's "
                                 f"{trailing}")
            rows.append(n)
        self.plan = plan_batch(p.batch_size, self.name, self.phase)
        rng = np.random.default_rng(shuffle_seed(self.name, get_rng())) if p.shuffle else None
        self.stream = FileRowStream(rows, bool(p.shuffle), rng)
        self._cache: dict[int, list[np.ndarray]] = {}
        for t, tr in zip(top, trailing):
            t.reshape((self.plan.local_batch,) + tuple(tr))

    def _load(self, f: int) -> list[np.ndarray]:
        if f not in self._cache:
            import h5py
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            with h5py.File(self.files[f], "r") as h:
                self._cache[f] = [np.asarray(h[name][...], dtype=np.float32) for name in self.top_names]
        return self._cache[f]

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        files, rows = self.stream.take(self.plan.block)
        files, rows = files[self.plan.offsets], rows[self.plan.offsets]
        # consecutive runs of the same file are gathered at once
        cuts = np.flatnonzero(np.diff(files)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [len(files)]])
        for j, t in enumerate(top):
            parts = [self._load(int(files[s]))[j][rows[s:e]] for s, e in zip(starts, ends)]
            t.data[...] = self.xp.asarray(np.concatenate(parts) if len(parts) > 1 else parts[0])


# -- MemoryData ------------------------------------------------------------------------------------
@register("MemoryData")
class MemoryDataLayer(Layer):
    """MemoryDataLayer: batches taken in turn from arrays given by ``set_input_arrays`` (pycaffe's
    Net.set_input_arrays / MemoryDataLayer::Reset); the data is used as given, untransformed."""

    exact_num_bottom = 0
    exact_num_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.memory_data_param
        self.batch_size = int(p.batch_size)
        self.chw = (int(p.channels), int(p.height), int(p.width))
        if self.batch_size <= 0 or min(self.chw) <= 0:
            raise CaffeError(f"layer '{self.name}': batch_size, channels, height and width must be "
                             "specified and positive")
        top[0].reshape((self.batch_size,) + self.chw)
        top[1].reshape((self.batch_size,))
        self._data = self._labels = None
        self.pos = 0

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """MemoryDataLayer::Reset: float32 data (n,C,H,W) and labels (n,) or (n,1,1,1);
        n must be a multiple of batch_size."""
        data = np.asarray(data)
        labels = np.asarray(labels)
        if data.dtype != np.float32 or labels.dtype != np.float32:
            raise CaffeError(f"layer '{self.name}': data and labels must be float32 arrays")
        if labels.ndim == 1:
            labels = labels[:, None, None, None]
        if data.ndim != 4 or labels.ndim != 4 or labels.shape[1:] != (1, 1, 1):
            raise CaffeError(f"layer '{self.name}': data must be 4-d and labels (n,) or (n,1,1,1), "
                             f"got {list(data.shape)} and {list(labels.shape)}")
        if data.shape[0] != labels.shape[0]:
            raise CaffeError(f"layer '{self.name}': data has {data.shape[0]} items, labels {labels.shape[0]}")
        if data.shape[1:] != self.chw:
            raise CaffeError(f"layer '{self.name}': data items have shape {list(data.shape[1:])}, "
                             f"the layer {list(self.chw)}")
        if data.shape[0] % self.batch_size:
            raise CaffeError(f"layer '{self.name}': n ({data.shape[0]}) must be a multiple of batch size "
                             f"({self.batch_size})")
        self._data = self.xp.asarray(data)
        self._labels = self.xp.asarray(labels.reshape(-1))
        self.pos = 0

    def set_batch_size(self, new_size: int) -> None:
        if self._data is not None and self._data.shape[0] % new_size:
            raise CaffeError(f"layer '{self.name}': batch size {new_size} does not divide the data's "
                             f"{self._data.shape[0]} items")
        self.batch_size = int(new_size)
        self.pos = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        if self._data is None:
            raise CaffeError(f"layer '{self.name}': MemoryData needs set_input_arrays before forward")
        b, s = self.batch_size, self.pos
        top[0].reshape((b,) + self.chw)
        top[1].reshape((b, 1, 1, 1))  # Caffe's Forward reshapes the label this way
        top[0].data[...] = self._data[s:s + b]
        top[1].data[...] = self._labels[s:s + b].reshape(b, 1, 1, 1)
        self.pos = (s + b) % self._data.shape[0]
