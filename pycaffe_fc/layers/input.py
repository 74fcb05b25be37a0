"""Input, DummyData, Split and Silence: the layers the Net itself leans on."""
from __future__ import annotations

from ..errors import CaffeError
from ..fillers import fill
from .base import Layer, register


@register("Input")
class InputLayer(Layer):
    """InputLayer: tops shaped by input_param.shape (one shape for all, or one per top);
    their data is set from outside (pycaffe ``net.blobs['data'].data[...] = x``)."""

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise CaffeError(f"layer '{self.name}': input_param must give 0, 1 or {len(top)} shapes")
        for i, t in enumerate(top):
            if len(shapes):
                t.reshape(list(shapes[0 if len(shapes) == 1 else i].dim))

    def reshape(self, bottom, top):
        pass  # the user's reshape of the blob is the only one

    def forward(self, bottom, top):
        pass


@register("DummyData")
class DummyDataLayer(Layer):
    """DummyDataLayer: tops of given shapes filled by data_filler; constant fillers fill once."""

    exact_num_bottom = 0
    min_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.dummy_data_param
        n = len(top)
        legacy = len(p.num) or len(p.channels) or len(p.height) or len(p.width)
        if legacy:
            if len(p.shape):
                raise CaffeError(f"layer '{self.name}': give either shape or num/channels/height/width")
            dims = [list(x) for x in (p.num, p.channels, p.height, p.width)]
            shapes = []
            for i in range(n):
                shapes.append([d[0 if len(d) == 1 else i] for d in dims])
        else:
            if len(p.shape) not in (1, n):
                raise CaffeError(f"layer '{self.name}': give 1 or {n} shapes")
            shapes = [list(p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(n)]
        fillers = list(p.data_filler)
        if len(fillers) not in (0, 1, n):
            raise CaffeError(f"layer '{self.name}': give 0, 1 or {n} data_filler")
        from ..proto import caffe_pb2
        if not fillers:
            f = caffe_pb2.FillerParameter()
            f.type = "constant"
            f.value = 0
            fillers = [f]
        self._fillers = [fillers[0 if len(fillers) == 1 else i] for i in range(n)]
        # Caffe refills on every forward unless every filler is constant
        self._refill = [f.type != "constant" for f in self._fillers]
        for t, s, f in zip(top, shapes, self._fillers):
            t.reshape(s)
            fill(f, t)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for t, f, again in zip(top, self._fillers, self._refill):
            if again:
                fill(f, t)


@register("Split")
class SplitLayer(Layer):
    """SplitLayer: every top shares the bottom's data; backward sums the tops' diffs."""

    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        for t in top:
            t.reshape(bottom[0].shape)
            t.share_data(bottom[0])

    def forward(self, bottom, top):
        pass  # data is shared

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if len(top) == 1:
            bottom[0].diff[...] = top[0].diff
            return
        out = bottom[0].diff
        self.xp.add(top[0].diff, top[1].diff, out=out)
        for t in top[2:]:
            out += t.diff


@register("Silence")
class SilenceLayer(Layer):
    """SilenceLayer: consumes bottoms so they are not net outputs; backward gives zero diffs."""

    min_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, p in zip(bottom, propagate_down):
            if p:
                b.diff[...] = 0
