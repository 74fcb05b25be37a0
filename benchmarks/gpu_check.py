#!/usr/bin/env python3
"""One command for a machine with a GPU: GPU mode checked with the real CuPy, then timed.

CI tests GPU mode on a strict CuPy stand-in (tests/standin) because no GPU is lent to it. This
script is what to run the first time fc-caffe meets a real GPU; it finishes in under 8 minutes on
one GPU (``--budget-s``) and prints one table:

1. **tests**: the layer and whole-net test files under pytest in GPU mode with the real CuPy
   (``FC_CAFFE_TEST_MODE=gpu`` with ``FC_CAFFE_CUPY=real``: the stand-in stays off the path);
2. **GPU vs CPU**: NiN and GoogLeNet (../shared/caffe-reference/timing) built in both modes with
   the same weights and input, TEST phase (no dropout noise), ``force_backward``: the largest
   relative difference of the outputs, the input gradient and the parameter gradients;
3. **timing**: NiN and GoogLeNet forward+backward (TRAIN phase, ``force_backward``, as
   ``caffe time``) at batch 32 in fc-caffe's GPU mode, and, when PyTorch is importable, the same
   nets built in PyTorch from the same prototxt (for timing only) on the same GPU. TF32 is off
   on both sides (CuPy does not use it by default), cuDNN autotuning on for PyTorch.

Usage (repository root; ../shared must hold the reference nets):

    python3 benchmarks/gpu_check.py                  # everything, batch 32
    python3 benchmarks/gpu_check.py --skip-tests --iters 20
    python3 benchmarks/gpu_check.py --nets nin --batch 16

Exit status: 0 when every check passed, 1 when a check failed, 2 when there is no usable GPU
(the message says what is missing). A benchmark and a check only: the timings assert nothing.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SHARED = os.environ.get("FC_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
TIMING = os.path.join(SHARED, "caffe-reference", "timing")
NETS = {"nin": os.path.join(TIMING, "nin_imagenet_b8.prototxt"),
        "googlenet": os.path.join(TIMING, "googlenet_b8.prototxt")}
#: the layer and whole-net test files run with the real CuPy
TEST_FILES = ("tests/test_layers_activation.py", "tests/test_layers_eltwise.py", "tests/test_layers_loss.py",
              "tests/test_layers_misc.py", "tests/test_layers_shape.py", "tests/test_layers_vision.py",
              "tests/test_reference_layers.py", "tests/test_net.py", "tests/test_net_reference.py",
              "tests/test_gpu_launches.py")
#: GPU against CPU: the largest difference relative to the largest magnitude that passes
COMPARE_TOL = 2e-3
COMPARE_BATCH = 4


class NoGPU(Exception):
    """No usable CuPy/GPU: the message says what is missing."""


# -- the table ------------------------------------------------------------------------------------
def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table: columns padded to their widest cell, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def numeric(v: str) -> bool:
        return bool(re.fullmatch(r"[-+]?[\d.,]+(e[-+]?\d+)?( ?(ms|s|x|%))?", v))

    lines = []
    for j, r in enumerate(cells):
        parts = [c.rjust(w) if j and numeric(c) else c.ljust(w) for c, w in zip(r, widths)]
        lines.append("  ".join(parts).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass
class Report:
    """What each part found, printed as one table at the end."""

    rows: list[list] = field(default_factory=list)
    failed: bool = False

    def add(self, part: str, what: str, result: str, detail: str = "", ok: bool = True) -> None:
        self.rows.append([part, what, result, detail])
        self.failed |= not ok

    def render(self) -> str:
        return format_table(["part", "what", "result", "detail"], self.rows)


# -- the machine ----------------------------------------------------------------------------------
def find_cupy():
    """The real CuPy with at least one usable device, else NoGPU saying what is missing."""
    try:
        import cupy  # type: ignore
    except ImportError as e:
        raise NoGPU(f"CuPy is not installed ({e}); pip install 'fc-caffe[gpu]' (cupy-cuda12x[ctk])") from None
    except Exception as e:  # a broken CUDA installation fails at import
        raise NoGPU(f"CuPy does not load: {type(e).__name__}: {e}") from None
    path = os.path.abspath(getattr(cupy, "__file__", "") or "")
    if "standin" in path.replace("\\", "/").split("/")[-3:-1] or "cupy_standin" in sys.modules:
        raise NoGPU(f"'cupy' is the CPU stand-in ({path}), not CuPy: take tests/standin off PYTHONPATH")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise NoGPU(f"no usable CUDA driver/device: {type(e).__name__}: {e}") from None
    if n < 1:
        raise NoGPU("CuPy sees no CUDA device (check nvidia-smi and CUDA_VISIBLE_DEVICES)")
    return cupy


def find_torch():
    """torch with a CUDA device, or None (the comparison columns then say why)."""
    try:
        import torch  # type: ignore
    except Exception:
        return None
    return torch if torch.cuda.is_available() else None


def device_name(cupy) -> str:
    try:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return "?"


# -- 1. the tests with the real CuPy ----------------------------------------------------------------
def run_tests(report: Report, files, timeout_s: float) -> None:
    files = [f for f in files if os.path.exists(os.path.join(ROOT, f))]
    env = dict(os.environ, FC_CAFFE_TEST_MODE="gpu", FC_CAFFE_CUPY="real")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(10.0, timeout_s))
    except subprocess.TimeoutExpired:
        report.add("tests", f"{len(files)} files, GPU mode", "TIMEOUT", f"over {timeout_s:.0f} s", ok=False)
        return
    summary = parse_pytest_summary(p.stdout + p.stderr)
    ok = p.returncode == 0
    report.add("tests", f"{len(files)} files, GPU mode", "pass" if ok else "FAIL",
               f"{summary} ({time.perf_counter() - t0:.0f} s)", ok=ok)
    if not ok:
        failed = [ln for ln in p.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        for ln in failed[:15]:
            report.add("tests", "", "", ln[:110], ok=False)


def parse_pytest_summary(text: str) -> str:
    """pytest's last summary line ('12 passed, 1 failed in 3.2s'), without the decoration."""
    for line in reversed(text.strip().splitlines()):
        if re.search(r"\b(passed|failed|error|errors|skipped|no tests ran)\b", line):
            return line.strip("= ").strip()
    return "no pytest summary"


# -- 2. GPU against CPU -----------------------------------------------------------------------------
def build_net(path: str, batch: int, phase: int):
    import pycaffe_fc as caffe
    from benchnet import input_net_param

    return caffe.Net(input_net_param(path, batch), phase)


def _rel(a, b) -> float:
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) if b.size else 0.0


def forward_backward(net, inputs: dict, top_diffs: dict) -> dict:
    """Outputs, input gradients and parameter gradients of one forward+backward, on the host."""
    import numpy as np
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.forward()
    for name, value in top_diffs.items():
        net.blobs[name].diff[...] = value
    net.clear_param_diffs()
    net.backward()
    res = {f"out {n}": np.array(net.blobs[n].data) for n in net.outputs}
    res.update({f"grad {n}": np.array(net.blobs[n].diff) for n in inputs})
    for lname, blobs in net.params.items():
        for i, b in enumerate(blobs):
            res[f"param {lname}[{i}]"] = np.array(b.diff)
    return res


def compare_net(report: Report, name: str, path: str) -> None:
    import numpy as np
    import pycaffe_fc as caffe

    rng = np.random.default_rng(0)
    caffe.set_mode_cpu()
    cpu = build_net(path, COMPARE_BATCH, caffe.TEST)
    inputs = {n: rng.standard_normal(cpu.blobs[n].shape).astype(np.float32) for n in cpu.inputs}
    diffs = {n: rng.standard_normal(cpu.blobs[n].shape).astype(np.float32) for n in cpu.outputs}
    weights = {k: [np.array(b.data) for b in v] for k, v in cpu.params.items()}
    ref = forward_backward(cpu, inputs, diffs)
    caffe.set_mode_gpu()
    try:
        gpu = build_net(path, COMPARE_BATCH, caffe.TEST)
        for k, blobs in gpu.params.items():
            for b, w in zip(blobs, weights[k]):
                b.data[...] = w
        got = forward_backward(gpu, inputs, diffs)
    finally:
        caffe.set_mode_cpu()
    worst = {"out": ("", 0.0), "grad": ("", 0.0), "param": ("", 0.0)}
    for key, value in ref.items():
        kind = key.split()[0]
        r = _rel(got[key], value)
        if r >= worst[kind][1]:
            worst[kind] = (key, r)
    for kind, (key, r) in worst.items():
        ok = r < COMPARE_TOL
        report.add("GPU vs CPU", f"{name} b{COMPARE_BATCH} {kind}", f"{r:.2e}", key + ("" if ok else "  FAIL"), ok=ok)


# -- 3. timing ------------------------------------------------------------------------------------
def time_ours(cupy, path: str, batch: int, iters: int) -> float:
    """Median ms of forward+backward in fc-caffe's GPU mode (TRAIN, as ``caffe time``)."""
    import numpy as np
    import pycaffe_fc as caffe

    caffe.set_mode_gpu()
    try:
        net = build_net(path, batch, caffe.TRAIN)
        net.keep_forward_columns()
        rng = np.random.default_rng(0)
        for n in net.inputs:
            net.blobs[n].data[...] = rng.standard_normal(net.blobs[n].shape).astype(np.float32)
        for n in net.outputs:
            net.blobs[n].diff[...] = rng.standard_normal(net.blobs[n].shape).astype(np.float32)
        dev = cupy.cuda.Device()
        times = []
        for i in range(iters + 3):  # three warm-up passes: CuPy compiles its kernels on first use
            dev.synchronize()
            t = time.perf_counter()
            net.Forward()  # Net::Forward/Backward, as `caffe time`: nothing read back on the host
            net.Backward()
            dev.synchronize()
            if i >= 3:
                times.append((time.perf_counter() - t) * 1e3)
        return float(np.median(times))
    finally:
        caffe.set_mode_cpu()


class TorchNet:
    """A prototxt's layers as PyTorch operations, for timing only (Caffe's pooling rounds up:
    ceil_mode; AVE counts the padding; LRN across channels)."""

    SUPPORTED = ("Input", "Convolution", "ReLU", "Pooling", "LRN", "Concat", "Dropout", "InnerProduct",
                 "Softmax", "Split")

    def __init__(self, torch, param, batch: int) -> None:
        self.torch = torch
        nn = torch.nn
        self.layers = []
        self.modules = nn.ModuleList()
        self.inputs: dict[str, tuple] = {}
        for lp in param.layer:
            if any(r.HasField("phase") and r.phase != 0 for r in lp.include):
                continue
            if lp.type not in self.SUPPORTED:
                raise ValueError(f"layer type {lp.type} not translated for the PyTorch timing")
            mod = None
            if lp.type == "Input":
                for top, shape in zip(lp.top, lp.input_param.shape):
                    self.inputs[top] = (batch,) + tuple(shape.dim[1:])
            elif lp.type == "Convolution":
                cp = lp.convolution_param
                k = cp.kernel_size[0] if len(cp.kernel_size) else (cp.kernel_h, cp.kernel_w)
                s = cp.stride[0] if len(cp.stride) else 1
                p = cp.pad[0] if len(cp.pad) else 0
                mod = nn.LazyConv2d(cp.num_output, k, stride=s, padding=p, groups=cp.group, bias=cp.bias_term)
            elif lp.type == "InnerProduct":
                mod = nn.LazyLinear(lp.inner_product_param.num_output, bias=lp.inner_product_param.bias_term)
            elif lp.type == "LRN":
                q = lp.lrn_param
                mod = nn.LocalResponseNorm(q.local_size, alpha=q.alpha, beta=q.beta, k=q.k)
            if mod is not None:
                self.modules.append(mod)
            self.layers.append((lp, mod))

    def __call__(self, blobs: dict) -> dict:
        F = self.torch.nn.functional
        torch = self.torch
        for lp, mod in self.layers:
            t = lp.type
            if t == "Input":
                continue
            b = [blobs[n] for n in lp.bottom]
            if t in ("Convolution", "LRN"):
                y = mod(b[0])
            elif t == "InnerProduct":
                y = mod(b[0].flatten(1))
            elif t == "ReLU":
                slope = lp.relu_param.negative_slope
                y = F.leaky_relu(b[0], slope) if slope else F.relu(b[0])
            elif t == "Pooling":
                pp = lp.pooling_param
                if pp.global_pooling:
                    k, s, p = tuple(b[0].shape[2:]), 1, 0
                else:
                    k = pp.kernel_size or (pp.kernel_h, pp.kernel_w)
                    s, p = pp.stride or 1, pp.pad
                if pp.pool == 0:
                    y = F.max_pool2d(b[0], k, s, p, ceil_mode=True)
                else:
                    y = F.avg_pool2d(b[0], k, s, p, ceil_mode=True, count_include_pad=True)
            elif t == "Concat":
                y = torch.cat(b, dim=lp.concat_param.axis)
            elif t == "Dropout":
                y = F.dropout(b[0], lp.dropout_param.dropout_ratio, training=True)
            elif t == "Softmax":
                y = F.softmax(b[0], dim=lp.softmax_param.axis)
            else:  # Split: every top is the bottom (autograd sums the gradients)
                y = b[0]
            for top in lp.top:
                blobs[top] = y
        return blobs


def time_torch(torch, path: str, batch: int, iters: int) -> float:
    """Median ms of forward+backward of the same net in PyTorch (input gradient included)."""
    import numpy as np
    from pycaffe_fc.proto.io import read_net_param

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    param = read_net_param(path)
    net = TorchNet(torch, param, batch)
    dev = torch.device("cuda")
    net.modules.to(dev)
    inputs = {n: torch.randn(s, device=dev, requires_grad=True) for n, s in net.inputs.items()}
    consumed = {b for lp, _ in net.layers for b in lp.bottom}
    outputs = [top for lp, _ in net.layers for top in lp.top if top not in consumed]
    times = []
    grads = None
    for i in range(iters + 3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        blobs = net(dict(inputs))
        outs = [blobs[n] for n in outputs]
        if grads is None:
            grads = [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, grads)
        torch.cuda.synchronize()
        if i >= 3:
            times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def timing(report: Report, cupy, torch, nets, batch: int, iters: int) -> None:
    for name in nets:
        try:
            ours = time_ours(cupy, NETS[name], batch, iters)
        except Exception as e:  # noqa: BLE001 - reported in the table
            report.add("timing", f"{name} b{batch} fwd+bwd", "ERROR", f"fc-caffe: {type(e).__name__}: {e}"[:110],
                       ok=False)
            continue
        if torch is None:
            report.add("timing", f"{name} b{batch} fwd+bwd", f"{ours:.1f} ms", "PyTorch: not installed (no CUDA torch)")
            continue
        try:
            theirs = time_torch(torch, NETS[name], batch, iters)
            report.add("timing", f"{name} b{batch} fwd+bwd", f"{ours:.1f} ms",
                       f"PyTorch {theirs:.1f} ms, fc-caffe/PyTorch {ours / theirs:.2f}x")
        except Exception as e:  # noqa: BLE001
            report.add("timing", f"{name} b{batch} fwd+bwd", f"{ours:.1f} ms",
                       f"PyTorch failed: {type(e).__name__}: {e}"[:110])


# -- the command ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="fc-caffe's GPU mode on a real GPU: tests with CuPy, GPU vs CPU, "
                                            "timing beside PyTorch (one table)")
    p.add_argument("--nets", default="nin,googlenet", help="comma-separated, of: " + ", ".join(NETS))
    p.add_argument("--batch", type=int, default=32, help="batch for the timing (default 32)")
    p.add_argument("--iters", type=int, default=10, help="timed passes per net (after 3 warm-up passes)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="seconds for the whole check; the tests get what the rest leaves (default 420)")
    p.add_argument("--skip-tests", action="store_true", help="skip the pytest part")
    p.add_argument("--skip-compare", action="store_true", help="skip GPU against CPU")
    p.add_argument("--skip-timing", action="store_true", help="skip the timing")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    bad = [n for n in nets if n not in NETS]
    if bad:
        build_parser().error(f"unknown net(s) {', '.join(bad)}; choose from {', '.join(NETS)}")
    if args.batch < 1 or args.iters < 1:
        build_parser().error("--batch and --iters must be positive")
    args.nets = nets
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        cupy = find_cupy()
    except NoGPU as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    missing = [NETS[n] for n in args.nets if not os.path.exists(NETS[n])]
    if missing:
        print(f"gpu_check: reference net not found: {missing[0]} (FC_SHARED points at ../shared)", file=sys.stderr)
        return 2
    torch = find_torch()
    report = Report()
    report.add("device", device_name(cupy), f"CuPy {cupy.__version__}",
               f"PyTorch {torch.__version__}" if torch is not None else "PyTorch: not installed (or no CUDA)")
    if not args.skip_compare:
        for name in args.nets:
            try:
                compare_net(report, name, NETS[name])
            except Exception as e:  # noqa: BLE001 - reported in the table
                report.add("GPU vs CPU", name, "ERROR", f"{type(e).__name__}: {e}"[:110], ok=False)
    if not args.skip_timing:
        timing(report, cupy, torch, args.nets, args.batch, args.iters)
    if not args.skip_tests:
        # the tests run last, in a child process, with whatever time the budget has left
        left = args.budget_s - (time.perf_counter() - t0)
        run_tests(report, TEST_FILES, left)
    report.add("total", "", f"{time.perf_counter() - t0:.0f} s", "FAILED" if report.failed else "all checks passed",
               ok=not report.failed)
    print(report.render())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
