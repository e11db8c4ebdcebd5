"""The few CUDA runtime calls the TensorRT backend needs, through Polygraphy's CUDA wrapper.

Polygraphy (in the ``gpu`` extra, beside TensorRT) finds libcudart in the CUDA toolkit or in the
nvidia-cuda-runtime wheels and wraps malloc, free, copies and streams; this module adds the two
calls it lacks (device count, choice and compute capability) on the same library handle, and turns failures into
``CudaError`` with CUDA's own message.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ..errors import HydraExportError


class CudaError(HydraExportError):
    """The CUDA runtime is missing, finds no GPU, or failed a call."""


COMPUTE_CAPABILITY_MAJOR, COMPUTE_CAPABILITY_MINOR = 75, 76  # cudaDeviceAttr values
NOT_FOUND = ("the CUDA runtime (libcudart) was not found; the GPU backends need an NVIDIA driver and CUDA, "
             "e.g. `pip install 'hydra-export[gpu]'` on a machine with an NVIDIA GPU")


class CudaRuntime:
    def __init__(self, cuda):
        """``cuda``: a ``polygraphy.cuda.Cuda`` wrapper (``polygraphy.cuda.wrapper()``)."""
        from polygraphy.cuda import MemcpyKind

        self.cuda, self.lib, self.kind = cuda, cuda.handle, MemcpyKind
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p

    @classmethod
    def load(cls) -> CudaRuntime:
        try:
            from polygraphy import cuda
        except ImportError:
            raise CudaError(NOT_FOUND + " (Polygraphy, which loads it, is not installed)") from None
        try:
            return cls(cuda.wrapper())
        except (OSError, AttributeError):  # no library, or one without the CUDA runtime's symbols
            raise CudaError(NOT_FOUND) from None

    def _call(self, call: str, function, *args):
        """Polygraphy's wrapper raises a bare "CUDA Error: N"; name the call and CUDA's reason."""
        from polygraphy.exception import PolygraphyException

        try:
            return function(*args)
        except PolygraphyException:
            status = self.lib.cudaGetLastError()
            reason = self.lib.cudaGetErrorString(status).decode() if status else "see the CUDA error above"
            raise CudaError(f"{call} failed: {reason}") from None

    def device_count(self) -> int:
        count = ctypes.c_int(0)
        status = self.lib.cudaGetDeviceCount(ctypes.byref(count))
        return count.value if status == 0 else 0

    def compute_capability(self, device: int = 0) -> tuple[int, int]:
        """(major, minor) of ``device``, e.g. (9, 0) for an H100/H200."""
        values = []
        for attribute in (COMPUTE_CAPABILITY_MAJOR, COMPUTE_CAPABILITY_MINOR):
            value = ctypes.c_int(0)
            status = self.lib.cudaDeviceGetAttribute(ctypes.byref(value), attribute, device)
            if status != 0:
                raise CudaError(f"cudaDeviceGetAttribute failed: {self.lib.cudaGetErrorString(status).decode()}")
            values.append(value.value)
        return values[0], values[1]

    def set_device(self, device: int) -> None:
        if device >= self.device_count():
            raise CudaError(f"no CUDA device {device}: this machine has {self.device_count()} visible GPU(s)")
        status = self.lib.cudaSetDevice(device)
        if status != 0:
            raise CudaError(f"cudaSetDevice({device}) failed: {self.lib.cudaGetErrorString(status).decode()}")

    def malloc(self, size: int) -> int:
        return self._call(f"cudaMalloc({size} bytes)", self.cuda.malloc, max(size, 1))

    def free(self, pointer: int) -> None:
        self._call("cudaFree", self.cuda.free, pointer)

    def stream(self) -> int:
        return self._call("cudaStreamCreate", self.cuda.create_stream) or 0

    def destroy_stream(self, stream: int) -> None:
        self._call("cudaStreamDestroy", self.cuda.destroy_stream, stream)

    def synchronize(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", self.cuda.stream_synchronize, stream)

    def copy_on_device(self, destination: int, source: int, nbytes: int, stream: int) -> None:
        if nbytes:
            self._call("cudaMemcpyAsync (device to device)", self.cuda.memcpy, destination, source, nbytes,
                       self.kind.DeviceToDevice, stream)

    def to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        if array.nbytes:
            self._call("cudaMemcpyAsync (host to device)", self.cuda.memcpy, pointer, array.ctypes.data, array.nbytes,
                       self.kind.HostToDevice, stream)

    def to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        if array.nbytes:
            self._call("cudaMemcpyAsync (device to host)", self.cuda.memcpy, array.ctypes.data, pointer, array.nbytes,
                       self.kind.DeviceToHost, stream)
