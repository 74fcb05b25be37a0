"""Caffe's data pipeline: Datum, LMDB, the DataTransformer, prefetching, sharding and image tools."""
from .datum import array_to_datum, datum_to_array  # noqa: F401
from .sharding import clear_shard, get_shard, set_shard  # noqa: F401
