"""Caffe's message schema (generated from proto/caffe.proto) plus text/binary I/O and upgrades.

`caffe_pb2` is the module protoc generates from proto/caffe.proto, as in pycaffe
(`from caffe.proto import caffe_pb2`).
"""
from pycaffe_fc.proto import caffe_pb2

__all__ = ["caffe_pb2"]
