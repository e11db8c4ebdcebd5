"""On an NVIDIA GPU: TensorRT plans and ONNX Runtime CUDA, lossless against autoregressive
decoding on the same engines. Run with `python3 -m pytest -m gpu`; skipped without a GPU."""

import pytest

from hydra_export.artifact_verifier import verify_artifact
from hydra_runtime.backends.choice import choose_backend, onnxruntime_has_cuda
from hydra_runtime.generator import Generator
from hydra_runtime.manifest import Manifest

pytestmark = pytest.mark.gpu

PROMPTS = [[5, 9, 33, 7, 100], [17, 4, 88], [3, 120, 64, 9, 12, 44, 71, 2, 6]]


def assert_lossless(generator, max_new_tokens=40):
    steps = tokens = 0
    for prompt in PROMPTS:
        hydra, stats = generator.generate_ids(prompt, max_new_tokens, mode="hydra")
        autoregressive, _ = generator.generate_ids(prompt, max_new_tokens, mode="autoregressive")
        assert hydra == autoregressive, prompt
        steps, tokens = steps + stats.steps, tokens + len(hydra)
    # the tiny Llama loops on PROMPTS[0] in a way these random Medusa heads predict: deep paths get accepted
    assert steps < tokens - 10


@pytest.fixture(scope="module")
def tensorrt_artifact(artifacts):
    pytest.importorskip("tensorrt", reason="needs the tensorrt package (the gpu extra)")
    return artifacts("llama", "medusa", dtype="fp16", target="tensorrt")


def test_tensorrt_plan_is_recorded_and_chosen(tensorrt_artifact):
    manifest = Manifest.read(tensorrt_artifact)
    assert (tensorrt_artifact / manifest.tensorrt.plan).stat().st_size > 0
    assert manifest.tensorrt.profile["past_key_values.0.key"]  # empty to full cache
    assert (tensorrt_artifact / manifest.tensorrt.timing_cache).is_file()
    assert choose_backend(manifest) == "tensorrt"


def test_tensorrt_decoding_is_lossless(tensorrt_artifact):
    with Generator.load(tensorrt_artifact, backend="tensorrt") as generator:
        assert generator.backend.name == "tensorrt"
        assert_lossless(generator)
        long_prompt = [3 + i % 120 for i in range(150)]
        whole = generator.generate_ids(long_prompt, 8)[0]
        generator.backend.max_causal_tokens = 40  # the prompt in chunks, through the present.* staging buffers
        assert generator.generate_ids(long_prompt, 8)[0] == whole


def test_tensorrt_verify_passes(tensorrt_artifact, model_dirs):
    report = verify_artifact(tensorrt_artifact, model=str(model_dirs["llama"]))
    assert any(row.graph.endswith("[tensorrt]") for row in report.comparisons)
    assert report.polygraphy_passed
    assert report.tensorrt_tokens["hydra"] == report.tensorrt_tokens["autoregressive"]


@pytest.mark.skipif(not onnxruntime_has_cuda(), reason="needs onnxruntime-gpu")
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_onnxruntime_cuda_with_io_binding_is_lossless(artifacts, dtype):
    # The CUDA provider runs with TF32 off (onnx_engine.PROVIDERS), so fp32 agrees with the CPU.
    artifact = artifacts("llama", "medusa", dtype=dtype)
    generator = Generator.load(artifact, backend="cuda")
    assert generator.backend.name == "onnxruntime-cuda"
    assert_lossless(generator)
    if dtype == "fp32":  # the same graphs on CPU agree token for token
        cpu = Generator.load(artifact, backend="cpu")
        for prompt in PROMPTS:
            assert cpu.generate_ids(prompt, 40)[0] == generator.generate_ids(prompt, 40)[0]
