"""The TensorRT plan checked against ONNX Runtime with Polygraphy, on the feeds of every case
`hydra-export verify` already made; then Hydra decoding on the plan against autoregressive
decoding on the same plan (the lossless check that holds at any precision)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hydra_runtime.backends.choice import onnxruntime_has_cuda
from hydra_runtime.engine import PAST_PREFIX
from hydra_runtime.generator import Generator

from .errors import HydraExportError
from .export.graph_specs import as_numpy
from .output_comparison import OutputComparison, compare_outputs


def import_polygraphy():
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        raise HydraExportError("polygraphy is not installed; `pip install 'hydra-export[gpu]'` to verify "
                               "TensorRT plans") from None


def onnxruntime_runner(onnx_path: Path):
    import_polygraphy()
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    providers = (["CUDAExecutionProvider"] if onnxruntime_has_cuda() else []) + ["CPUExecutionProvider"]
    return OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=providers), name="onnxruntime")


def tensorrt_runner(plan_path: Path):
    import_polygraphy()
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(plan_path.read_bytes()), name="tensorrt")


def compare_runners(graph: str, reference, candidate, feeds: dict[str, np.ndarray],
                    tolerance: float) -> tuple[list[OutputComparison], bool]:
    """Run both Polygraphy runners on ``feeds``; our error rows (candidate vs reference) and Polygraphy's verdict."""
    import polygraphy.comparator as comparator

    # SimpleCompareFunc since Polygraphy 0.50; CompareFunc.simple before (and deprecated after)
    simple = getattr(comparator, "SimpleCompareFunc", None) or comparator.CompareFunc.simple
    results = comparator.Comparator.run([reference, candidate], data_loader=[feeds])
    verdict = comparator.Comparator.compare_accuracy(results, compare_func=simple(atol=tolerance, rtol=tolerance))
    (_, [expected]), (_, [got]) = results.items()
    return compare_outputs(graph, dict(got), dict(expected)), bool(verdict)


def compare_plan(artifact_dir: Path, manifest, feeds_by_case: dict[str, dict], tolerance: float,
                 torch_engine=None):
    """The plan against its ONNX graph in ONNX Runtime on every case's feeds, or against
    ``torch_engine`` (the PyTorch module) where given (bf16 plans: ONNX Runtime has no bf16
    kernels); returns (rows labelled ``case [tensorrt]``, all passed)."""
    candidate = tensorrt_runner(artifact_dir / manifest.tensorrt.plan)
    if torch_engine is not None:
        return compare_plan_with_pytorch(candidate, torch_engine, feeds_by_case, tolerance)
    rows, passed = [], True
    reference = onnxruntime_runner(artifact_dir / manifest.engine.file)
    for case, feeds in feeds_by_case.items():
        case_rows, verdict = compare_runners(f"{case} [tensorrt]", reference, candidate, feeds, tolerance)
        rows += case_rows
        passed = passed and verdict
    return rows, passed


def compare_plan_with_pytorch(runner, torch_engine, feeds_by_case: dict[str, dict], tolerance: float):
    """A Polygraphy runner of a bf16 plan against PyTorch. The plan takes torch tensors (K/V as
    bf16: numpy has none) and returns them; both sides are compared as float32 numpy."""
    import torch

    rows = []
    with runner:
        for case, feeds in feeds_by_case.items():
            inputs = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in feeds.items()}
            inputs = {name: value.to(torch.bfloat16) if name.startswith(PAST_PREFIX) else value
                      for name, value in inputs.items()}
            got = {name: as_numpy(value) for name, value in runner.infer(inputs).items()}
            rows += compare_outputs(f"{case} [tensorrt]", got, torch_engine.run(feeds))
    return rows, all(row.within(tolerance) for row in rows)


def hydra_and_autoregressive_tokens(artifact_dir: Path, prompt_ids: list[int], max_new_tokens: int):
    with Generator.load(artifact_dir, backend="tensorrt", verify_checksums=False) as generator:
        hydra, _ = generator.generate_ids(prompt_ids, max_new_tokens, mode="hydra")
        autoregressive, _ = generator.generate_ids(prompt_ids, max_new_tokens, mode="autoregressive")
    return hydra, autoregressive
