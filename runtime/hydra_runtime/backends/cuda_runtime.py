"""The few CUDA runtime calls the TensorRT backend needs, through ctypes (no extra package).

libcudart comes with the CUDA toolkit, or with the nvidia-cuda-runtime wheels that
tensorrt and onnxruntime-gpu install; both places are searched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

import numpy as np

from ..errors import HydraExportError

HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE = 1, 2, 3
_WHEEL_PATTERNS = ("nvidia/cuda_runtime/lib/libcudart.so*", "nvidia/cu*/lib/libcudart.so*")


class CudaError(HydraExportError):
    """The CUDA runtime is missing, finds no GPU, or failed a call."""


def _candidates() -> list[str]:
    found = [ctypes.util.find_library("cudart")]
    for root in sys.path:
        for pattern in _WHEEL_PATTERNS:
            found += sorted(glob.glob(os.path.join(root, pattern)), reverse=True)
    return [path for path in found if path] + ["libcudart.so"]


class CudaRuntime:
    def __init__(self, library: ctypes.CDLL):
        self.lib = library
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.lib.cudaMemcpyAsync.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                             ctypes.c_void_p]
        self.lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        self.lib.cudaFree.argtypes = [ctypes.c_void_p]
        self.lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]

    @classmethod
    def load(cls) -> CudaRuntime:
        for path in _candidates():
            try:
                return cls(ctypes.CDLL(path))
            except OSError:
                continue
        raise CudaError("the CUDA runtime (libcudart) was not found; the GPU backends need an NVIDIA driver and "
                        "CUDA, e.g. `pip install 'hydra-export[gpu]'` on a machine with an NVIDIA GPU")

    def check(self, status: int, call: str) -> None:
        if status != 0:
            message = self.lib.cudaGetErrorString(status).decode()
            raise CudaError(f"{call} failed: {message} (CUDA error {status})")

    def device_count(self) -> int:
        count = ctypes.c_int(0)
        status = self.lib.cudaGetDeviceCount(ctypes.byref(count))
        return count.value if status == 0 else 0

    def set_device(self, device: int) -> None:
        if device >= self.device_count():
            raise CudaError(f"no CUDA device {device}: this machine has {self.device_count()} visible GPU(s)")
        self.check(self.lib.cudaSetDevice(device), "cudaSetDevice")

    def malloc(self, size: int) -> int:
        pointer = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(pointer), max(size, 1)), f"cudaMalloc({size} bytes)")
        return pointer.value

    def free(self, pointer: int) -> None:
        self.check(self.lib.cudaFree(pointer), "cudaFree")

    def copy_on_device(self, destination: int, source: int, nbytes: int, stream: int) -> None:
        if nbytes:
            self.check(self.lib.cudaMemcpyAsync(destination, source, nbytes, DEVICE_TO_DEVICE, stream),
                       "cudaMemcpyAsync (device to device)")

    def destroy_stream(self, stream: int) -> None:
        self.check(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")

    def stream(self) -> int:
        stream = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return stream.value or 0

    def synchronize(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        if array.nbytes:
            self.check(self.lib.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, HOST_TO_DEVICE, stream),
                       "cudaMemcpyAsync (host to device)")

    def to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        if array.nbytes:
            self.check(self.lib.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, DEVICE_TO_HOST, stream),
                       "cudaMemcpyAsync (device to host)")
