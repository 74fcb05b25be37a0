"""cupy.cuda.runtime stand-in: the pretend device's count and properties.

FC_CUPY_STANDIN_DEVICES=0 pretends a machine without a GPU (cudaErrorNoDevice), "nodriver" one
whose driver is missing (cudaErrorInsufficientDriver), as CuPy reports them.
"""
import os as _os

_device = 0


class CUDARuntimeError(RuntimeError):
    def __init__(self, status, msg=""):
        self.status = status
        super().__init__(msg)


def _count():
    v = _os.environ.get("FC_CUPY_STANDIN_DEVICES", "1")
    if v == "nodriver":
        raise CUDARuntimeError(35, "cudaErrorInsufficientDriver: CUDA driver version is insufficient for "
                                   "CUDA runtime version")
    n = int(v)
    if n <= 0:
        raise CUDARuntimeError(100, "cudaErrorNoDevice: no CUDA-capable device is detected")
    return n


def _check(device):
    n = _count()
    if not 0 <= device < n:
        raise CUDARuntimeError(101, "cudaErrorInvalidDevice: invalid device ordinal")


def getDeviceCount():
    return _count()


def getDevice():
    return _device


def setDevice(device):
    global _device
    _check(int(device))
    _device = int(device)


def deviceSynchronize():
    import cupy_standin
    cupy_standin.record("syncs")


def runtimeGetVersion():
    return 12080


def driverGetVersion():
    _count()
    return 12080


def memGetInfo():
    _count()
    return (80 * 2 ** 30, 80 * 2 ** 30)


def getDeviceProperties(device):
    """A dict of cudaDeviceProp fields, as CuPy returns (the stand-in's pretend device)."""
    _check(int(device))
    return {
        "name": b"CuPy stand-in (CPU)", "totalGlobalMem": 80 * 2 ** 30, "sharedMemPerBlock": 49152,
        "regsPerBlock": 65536, "warpSize": 32, "memPitch": 2147483647, "maxThreadsPerBlock": 1024,
        "maxThreadsDim": (1024, 1024, 64), "maxGridSize": (2147483647, 65535, 65535), "clockRate": 1980000,
        "totalConstMem": 65536, "major": 9, "minor": 0, "textureAlignment": 512, "texturePitchAlignment": 32,
        "deviceOverlap": 1, "multiProcessorCount": 132, "kernelExecTimeoutEnabled": 0, "integrated": 0,
        "canMapHostMemory": 1, "computeMode": 0, "concurrentKernels": 1, "ECCEnabled": 1, "pciBusID": 0,
        "pciDeviceID": device, "pciDomainID": 0, "asyncEngineCount": 2, "unifiedAddressing": 1,
        "memoryClockRate": 2619000, "memoryBusWidth": 5120, "l2CacheSize": 52428800,
        "maxThreadsPerMultiProcessor": 2048, "sharedMemPerMultiprocessor": 233472,
        "regsPerMultiprocessor": 65536, "managedMemory": 1, "isMultiGpuBoard": 0,
    }
