"""Data layers: Data (LMDB of Datum), ImageData (list file of images), HDF5Data, MemoryData.

As Caffe's BasePrefetchingDataLayer, Data and ImageData load batches on a background thread
(``data_param.prefetch`` of them ahead) and transform them with the DataTransformer; their tops
take the shape of the first record at setup and of each batch's first record at every forward
(so batch-1 layers accept images of varying size). When data-parallel sharding is set
(``pycaffe_fc.data.sharding.set_shard``) each worker reads its share of every batch.

Each layer knows the global stream position of the next batch the net will consume (not what
the prefetcher has read ahead) and the seed of its counter-based random stream; a solver
snapshot saves both (``resume_state``) and a resumed run puts them back
(``restore_resume_state``), so it reads and draws exactly what the uninterrupted run would. This
is an fc-caffe extension: BVLC Caffe's data layers start again from the first record.
"""
from __future__ import annotations

import itertools
import weakref

import numpy as np

from ..data import db as dbmod
from ..data.datum import datum_pixels, read_image
from ..data.prefetch import Prefetcher, map_decode
from ..data.sharding import plan_batch, shard_seed
from ..data.stream import FileRowStream, IndexStream, read_list_file
from ..data.transformer import DataTransformer
from ..errors import CaffeError
from ..proto import caffe_pb2
from ..rng import LayerStream, stream_seed
from .base import Layer, register


def _layer_stream(layer: Layer) -> LayerStream:
    # the same seed on every worker (the solver's random_seed or the job's common seed), so
    # workers draw alike; without one, a fresh seed that snapshots save
    return LayerStream(stream_seed(shard_seed()), layer.name, layer.phase)


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
        self.random_stream = _layer_stream(self)
        self.transformer = DataTransformer(self.layer_param.transform_param, self.phase,
                                           self.random_stream.key("transform"), what=f"layer '{self.name}'")
        loader, closeable, data_shape = self.data_layer_setup()
        top[0].reshape(data_shape)
        if self.output_labels:
            top[1].reshape((data_shape[0],))
        self._prefetch_count = (self.layer_param.data_param.prefetch
                                if self.layer_param.HasField("data_param") else 4)
        self._loader, self._closeable = loader, closeable
        #: global stream position (records) of the next batch forward hands to the net
        self.position = 0
        self._finalizer = None
        self._start_prefetch()

    def _start_prefetch(self) -> None:
        loader, start, block = self._loader, self.position, self._loader.plan.block
        batches = itertools.count()

        def load():  # the thread holds only the loader, never the layer
            return loader(start + next(batches) * block)

        self.prefetcher = Prefetcher(load, self._prefetch_count, name=f"layer '{self.name}'")
        self._finalizer = weakref.finalize(self, _shutdown, self.prefetcher, self._closeable)

    def data_layer_setup(self):
        """Open the source; return (loader, object to close, top shape). ``loader(position)``
        loads the batch whose block starts at global stream ``position``; it has a ``plan``."""
        raise NotImplementedError

    def apply_seed(self) -> None:
        """Re-derive the source's shuffle keys from ``random_stream`` (after a restore)."""

    # -- resume (fc-caffe extension) ----------------------------------------------------------
    def resume_state(self) -> dict:
        """The read position of the next batch the net consumes, and the random stream's seed."""
        return {"seed": self.random_stream.seed, "draws": 0, "position": self.position}

    def restore_resume_state(self, seed: int, draws: int, position: int) -> None:
        """Continue from a snapshot: discard what was prefetched, read from ``position`` on."""
        self._finalizer.detach()
        self.prefetcher.close()
        self.random_stream.reseed(seed)
        self.transformer.rekey(self.random_stream.key("transform"))
        self.apply_seed()
        self.position = int(position)
        self._start_prefetch()

    def reshape(self, bottom, top):
        pass  # tops take each batch's shape in forward, as Caffe's Forward_cpu does

    def forward(self, bottom, top):
        data, label = self.prefetcher.next()
        self.position += self._loader.plan.block
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

    def __init__(self, stream, plan, transformer: DataTransformer, what: str) -> None:
        self.stream = stream
        self.plan = plan
        self.transformer = transformer
        self.what = what

    def __call__(self, start: int):
        positions = start + self.plan.offsets
        records = [self.stream.value_at(int(q)) for q in positions]
        t = self.transformer

        def pixels(rec):
            key, value = rec
            d = dbmod.parse_datum(value, key, self.stream.path, self.what)
            where = f"{self.what}: {self.stream.path}: record '{key.decode(errors='replace')}'"
            return datum_pixels(d, t.force_color, t.force_gray, what=where), d.label

        # encoded images decode on the pool (OpenCV releases the GIL); raw ones are just copied
        if any(_maybe_encoded(v) for _, v in records):
            out = map_decode(pixels, records)
        else:
            out = [pixels(r) for r in records]
        imgs = [p for p, _ in out]
        _check_same_shape(imgs, [k for k, _ in records], f"{self.what}: {self.stream.path}")
        data = t.transform(np.stack(imgs), positions)
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
    """DataLayer: Datum records of an LMDB or LevelDB (``data_param.source``, ``backend``) in key
    order, restarting at the end."""

    def data_layer_setup(self):
        p = self.layer_param.data_param
        what = f"layer '{self.name}'"
        plan = plan_batch(p.batch_size, self.name, self.phase)
        stream = dbmod.open_stream(p.backend, p.source, what, explicit=p.HasField("backend"))
        key, value = stream.first_record()
        d = dbmod.parse_datum(value, key, p.source, what)
        t = self.transformer
        # force_color/force_gray act on encoded records only (Caffe logs that and goes on)
        first = f"{what}: {p.source}: record '{key.decode(errors='replace')}'"
        shape = t.infer_shape(datum_pixels(d, t.force_color, t.force_gray, what=first).shape)
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

    def __call__(self, start: int):
        positions = start + self.plan.offsets
        ids = self.stream.indices(positions)
        imgs = map_decode(self.load, [int(i) for i in ids])
        _check_same_shape(imgs, [self.names[i] for i in ids], self.what)
        return self.transformer.transform_hwc(np.stack(imgs), positions), self.labels[ids]


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
        stream = IndexStream(len(lines), bool(p.shuffle), self.random_stream.key("shuffle"))
        self.index_stream = stream
        self.apply_seed()
        loader = _ImageLoader(lines, p.root_folder, nh, nw, bool(p.is_color), stream, plan,
                              self.transformer, what)
        first = loader.load(int(stream.indices([0])[0]))
        shape = self.transformer.infer_shape((first.shape[2], first.shape[0], first.shape[1]))
        self.lines = lines
        self.plan = plan
        return loader, None, (plan.local_batch,) + shape

    def apply_seed(self) -> None:
        p = self.layer_param.image_data_param
        s = self.index_stream
        s.key = self.random_stream.key("shuffle") if s.shuffle else 0
        s._orders.clear()
        s.start = 0
        if p.rand_skip:  # keyed too, so every worker (and a resumed run) skips alike
            s.start = self.random_stream.key("rand_skip") % int(p.rand_skip)
            if s.start >= s.n:
                raise CaffeError(f"layer '{self.name}': not enough images ({s.n}) to skip {s.start}")


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
        self.random_stream = _layer_stream(self)
        self.stream = FileRowStream(rows, bool(p.shuffle), self.random_stream.key("shuffle"))
        #: global stream position (rows) of the next batch
        self.position = 0
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

    def resume_state(self) -> dict:
        """fc-caffe extension: the position of the next batch and the shuffle's seed."""
        return {"seed": self.random_stream.seed, "draws": 0, "position": self.position}

    def restore_resume_state(self, seed: int, draws: int, position: int) -> None:
        self.random_stream.reseed(seed)
        self.stream = FileRowStream(list(self.stream.rows), self.stream.shuffle, self.random_stream.key("shuffle"))
        self.position = int(position)

    def forward(self, bottom, top):
        files, rows = self.stream.locate(self.position + self.plan.offsets)
        self.position += self.plan.block
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
