"""Which backend runs an artifact: asked for by name, or chosen from the manifest and the machine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .cuda_runtime import CudaError, CudaRuntime
from .decode_backend import DecodeBackend
from ..errors import GenerationInputError
from ..manifest import Manifest

BACKENDS = ("auto", "cpu", "cuda", "tensorrt")


def gpu_count() -> int:
    try:
        return CudaRuntime.load().device_count()
    except CudaError:
        return 0


def onnxruntime_has_cuda() -> bool:
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def choose_backend(manifest: Manifest) -> str:
    """TensorRT where the artifact has plans and the machine a GPU and TensorRT; else ONNX
    Runtime's CUDA provider where it and a GPU are present; else ONNX Runtime on CPU. The CUDA
    runtime is only probed where a GPU engine is installed at all."""
    has_tensorrt = manifest.tensorrt is not None and importlib.util.find_spec("tensorrt") is not None
    has_ort_cuda = onnxruntime_has_cuda()
    if not (has_tensorrt or has_ort_cuda) or not gpu_count():
        return "cpu"
    return "tensorrt" if has_tensorrt else "cuda"


def open_backend(artifact_dir: Path, manifest: Manifest, backend: str = "auto",
                 threads: int | None = None) -> DecodeBackend:
    if backend not in BACKENDS:
        raise GenerationInputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = choose_backend(manifest)
    if backend == "tensorrt":
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(artifact_dir, manifest)
    from .ort_backend import OrtBackend

    return OrtBackend(artifact_dir, manifest, provider=backend, threads=threads)
