"""Backend choice, the GPU-side pieces a CPU can exercise, and their errors."""

import json
import shutil
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from hydra_export.cli import app
from hydra_export.tensorrt_build import TensorRTOptions, profile_shapes
from hydra_runtime import ArtifactError, GenerationInputError, HydraExportError
from hydra_runtime.backends.choice import choose_backend, gpu_count, open_backend
from hydra_runtime.backends.cuda_runtime import CudaError, CudaRuntime
from hydra_runtime.generator import Generator
from hydra_runtime.manifest import Manifest

no_gpu = pytest.mark.skipif(gpu_count() > 0, reason="checks what a machine without a GPU says")


@no_gpu
def test_auto_backend_is_onnxruntime_on_cpu_here(artifacts):
    artifact = artifacts("llama", "hydra")
    assert choose_backend(Manifest.read(artifact)) == "cpu"
    assert Generator.load(artifact).backend.name == "onnxruntime-cpu"


def test_unknown_backend_is_named(artifacts):
    artifact = artifacts("llama", "hydra")
    with pytest.raises(GenerationInputError, match="unknown backend 'gpu'.*auto, cpu, cuda, tensorrt"):
        open_backend(artifact, Manifest.read(artifact), "gpu")


def test_tensorrt_backend_needs_plans(artifacts):
    with pytest.raises(ArtifactError, match="holds no TensorRT plan.*--target tensorrt"):
        Generator.load(artifacts("llama", "hydra"), backend="tensorrt")


@no_gpu
def test_cuda_backend_without_cuda_says_what_to_install(artifacts):
    with pytest.raises(HydraExportError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        Generator.load(artifacts("llama", "hydra"), backend="cuda")


@no_gpu
def test_missing_cuda_runtime_is_a_clear_error(monkeypatch):
    def no_library():
        raise OSError("libcudart.so: cannot open shared object file")

    monkeypatch.setattr("polygraphy.cuda.wrapper", no_library)
    with pytest.raises(CudaError, match="libcudart.*was not found.*hydra-export\\[gpu\\]"):
        CudaRuntime.load()
    assert gpu_count() == 0
    monkeypatch.setitem(sys.modules, "polygraphy", None)
    with pytest.raises(CudaError, match="was not found.*Polygraphy, which loads it, is not installed"):
        CudaRuntime.load()


class FakeCall:
    """A ctypes function stand-in (it takes a restype)."""

    def __init__(self, result):
        self.result = result

    def __call__(self, *args):
        return self.result(*args) if callable(self.result) else self.result


def test_cuda_runtime_names_failed_calls_and_copies_by_kind():
    """The adapter over Polygraphy's CUDA wrapper, with the wrapper faked: no GPU needed."""
    from types import SimpleNamespace

    from polygraphy.cuda import MemcpyKind
    from polygraphy.exception import PolygraphyException

    copies = []

    class FakeCuda:
        handle = SimpleNamespace(cudaGetErrorString=FakeCall(lambda status: b"out of memory"),
                                 cudaGetLastError=FakeCall(2), cudaGetDeviceCount=FakeCall(100))

        def malloc(self, nbytes):
            raise PolygraphyException("CUDA Error: 2")

        def memcpy(self, destination, source, nbytes, kind, stream):
            copies.append((destination, source, nbytes, kind, stream))

    runtime = CudaRuntime(FakeCuda())
    with pytest.raises(CudaError, match=r"cudaMalloc\(1024 bytes\) failed: out of memory"):
        runtime.malloc(1024)
    assert runtime.device_count() == 0  # a failing cudaGetDeviceCount means no usable GPU
    host = np.arange(4, dtype=np.int32)
    runtime.to_device(77, host, stream=5)
    runtime.to_host(host, 88, stream=5)
    runtime.copy_on_device(1, 2, 0, stream=5)  # nothing to copy: no call
    runtime.copy_on_device(1, 2, 64, stream=5)
    assert copies == [(77, host.ctypes.data, 16, MemcpyKind.HostToDevice, 5),
                      (host.ctypes.data, 88, 16, MemcpyKind.DeviceToHost, 5),
                      (1, 2, 64, MemcpyKind.DeviceToDevice, 5)]


def test_tensorrt_profile_covers_prompts_trees_and_empty_to_full_cache():
    from hydra_runtime.manifest import TensorSpec

    inputs = (TensorSpec("input_ids", "int64", ("new_tokens",)), TensorSpec("tree_tokens", "int64", ("tree_nodes",)),
              TensorSpec("copy_tokens", "int64", ("copy_nodes",)), TensorSpec("temperature", "float", ()),
              TensorSpec("past_key_values.0.key", "float16", (1, "past_sequence", 3, 64)))
    options = TensorRTOptions(opt_past_len=512)
    assert profile_shapes(inputs, 2048, 16, 4, options) == {
        "input_ids": [[0], [0], [512]], "tree_tokens": [[1], [16], [16]], "copy_tokens": [[0], [4], [4]],
        "past_key_values.0.key": [[1, 0, 3, 64], [1, 512, 3, 64], [1, 2047, 3, 64]]}
    with pytest.raises(HydraExportError, match="symbolic dims \\['batch'\\]"):
        profile_shapes((TensorSpec("x", "float", ("batch", 4)),), 256, 16, 4, options)


@no_gpu
def test_tensorrt_target_without_a_gpu_fails_before_writing(model_dirs, tmp_path):
    out = tmp_path / "trt"
    result = CliRunner().invoke(app, ["build", "-m", str(model_dirs["llama"]), "--heads",
                                      str(_heads_dir(model_dirs, tmp_path)), "--target", "tensorrt", "-o", str(out)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert ("tensorrt is not installed" in result.output) or ("needs an NVIDIA GPU" in result.output)
    assert not out.exists() and not list(tmp_path.glob(".trt.partial-*"))


def _heads_dir(model_dirs, tmp_path):
    from conftest import random_heads

    from hydra_export.base_model import load_base_model
    from hydra_export.heads.checkpoint import save_heads

    heads_dir = tmp_path / "heads"
    save_heads(random_heads(load_base_model(model_dirs["llama"]), "hydra"), heads_dir)
    return heads_dir


def test_polygraphy_comparison_of_two_runners(artifacts):
    """The plumbing `verify` uses for TensorRT vs ONNX Runtime, with ONNX Runtime on both sides."""
    from hydra_export.tensorrt_verifier import compare_runners, onnxruntime_runner

    from hydra_export.artifact_verifier import engine_cases

    artifact = artifacts("llama", "hydra++")
    manifest = Manifest.read(artifact)
    empty = {spec.name: np.zeros((1, 0, *spec.shape[2:]), np.float32)
             for spec in manifest.engine.inputs if spec.name.startswith("past_key_values.")}
    feeds = engine_cases([5, 9, 33, 7], manifest.tree_buffers())["prefill"] | empty
    path = artifact / manifest.engine.file
    rows, passed = compare_runners("prefill", onnxruntime_runner(path), onnxruntime_runner(path), feeds, 1e-5)
    assert passed
    assert {row.output for row in rows} >= {"next_tree_tokens", "accepted_count", "present.0.key"}
    assert all(row.exact for row in rows if row.exact is not None)
    assert all(row.max_abs_error == 0 for row in rows if row.exact is None)


def test_fp16_artifact_with_half_precision_cache_is_lossless_on_cpu(artifacts):
    """The precision GPUs run (fp16 graphs, fp16 KV rows bound by pointer), exercised on ONNX Runtime CPU."""
    generator = Generator.load(artifacts("llama", "medusa", dtype="fp16"), backend="cpu")
    steps = tokens = 0
    for prompt in ([5, 9, 33, 7, 100], [17, 4, 88]):
        hydra, stats = generator.generate_ids(prompt, 40)
        assert hydra == generator.generate_ids(prompt, 40, mode="autoregressive")[0]
        steps, tokens = steps + stats.steps, tokens + len(hydra)
    assert steps < tokens / 2  # deep paths accepted: the cache offsets of multi-row commits matter


@pytest.fixture()
def artifact_with_plans(artifacts, tmp_path):
    """A CPU artifact whose manifest also lists a (placeholder) TensorRT plan, as a GPU build writes it."""
    from hydra_runtime.manifest import sha256_of

    copy = tmp_path / "with-plans"
    shutil.copytree(artifacts("llama", "hydra"), copy)
    (copy / "engine.plan").write_bytes(b"\0" * 2048)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tensorrt"] = {"version": "10.13.0", "plan": "engine.plan", "optimization_level": 3,
                            "build_seconds": 12.5, "profile": {}, "timing_cache": "timing.cache"}
    manifest["files"]["engine.plan"] = sha256_of(copy / "engine.plan")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_inspect_shows_tensorrt_plans(artifact_with_plans):
    result = CliRunner().invoke(app, ["inspect", str(artifact_with_plans)])
    assert result.exit_code == 0, result.output
    assert "TensorRT 10.13.0: 1 plan" in result.output and "built in 12 s" in result.output
    assert "engine.onnx + engine.plan" in result.output


@no_gpu
def test_plans_without_a_gpu_fall_back_to_onnxruntime(artifact_with_plans):
    assert choose_backend(Manifest.read(artifact_with_plans)) == "cpu"
    result = CliRunner().invoke(app, ["generate", str(artifact_with_plans), "Hi", "-n", "4", "--backend", "tensorrt"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("tensorrt is not installed" in result.output) or ("libcudart" in result.output)


@no_gpu
def test_gpu_check_script_says_what_is_missing(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
    result = subprocess.run(["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode != 0
    assert "gpu_check: missing a visible NVIDIA GPU" in result.stderr
    assert not (tmp_path / "out" / "smollm2-trt").exists()  # stopped before building anything


def test_misaligned_present_rows_go_through_staging_losslessly(artifacts, monkeypatch):
    """Where bound addresses must be aligned (the GPU), present.* rows that would start at a misaligned
    row go to aligned staging buffers and are copied after the prefix; prompts go in chunks. Exercised
    here on CPU memory (copies by memmove): same tokens as the direct binding, staging used."""
    from hydra_runtime.backends import ort_backend

    artifact = artifacts("llama", "hydra++")
    prompt = list(range(3, 40))
    expected = Generator.load(artifact).generate_ids(prompt, 30)[0]
    monkeypatch.setattr(ort_backend, "ALIGNED_DEVICES", ("cpu", "cuda"))
    monkeypatch.setattr(ort_backend, "STAGED_CAUSAL_TOKENS", 8)
    copies = []
    original = ort_backend.OrtBackend._copy_rows
    monkeypatch.setattr(ort_backend.OrtBackend, "_copy_rows",
                        lambda self, *args: copies.append(args[2]) or original(self, *args))
    staged = Generator.load(artifact)
    assert staged.backend.max_causal_tokens == 8
    for mode in ("hydra", "autoregressive"):
        assert staged.generate_ids(prompt, 30, mode=mode)[0] == expected
    assert copies and all(nbytes % staged.backend.row_bytes == 0 for nbytes in copies)


def test_cpu_prompts_longer_than_a_chunk_are_fed_in_chunks_losslessly(artifacts, monkeypatch):
    """The CPU backend prefills a long prompt in CPU_PROMPT_CHUNK-token calls (bounded activations):
    the same tokens as one call, in both modes, and no call takes more than a chunk."""
    from hydra_runtime.backends import ort_backend

    artifact = artifacts("llama", "hydra++")
    prompt = list(range(3, 40))
    monkeypatch.setattr(ort_backend, "CPU_PROMPT_CHUNK", 10_000)
    whole = Generator.load(artifact)
    expected = {mode: whole.generate_ids(prompt, 30, mode=mode)[0] for mode in ("hydra", "autoregressive")}
    monkeypatch.setattr(ort_backend, "CPU_PROMPT_CHUNK", 8)
    chunked = Generator.load(artifact)
    causal_tokens = []
    run = chunked.backend.run
    monkeypatch.setattr(chunked.backend, "run", lambda feeds: causal_tokens.append(len(feeds["input_ids"])) or run(feeds))
    for mode, tokens in expected.items():
        causal_tokens.clear()
        assert chunked.generate_ids(prompt, 30, mode=mode)[0] == tokens
        assert causal_tokens[:5] == [8, 8, 8, 8, 0]  # 4 x (8 causal + 1 as the tree), then the last 0 + root
        assert max(causal_tokens) == 8


def test_weight_file_pages_are_released_after_every_step_losslessly(artifacts, monkeypatch):
    """The ONNX Runtime backend caches its weight-file mappings in base pages once and gives back the
    pages each call mapped in (mapped_pages); the tiny model's mappings are taken here (the size floor
    lowered): same tokens, one release per call."""
    from hydra_runtime.backends import mapped_pages

    artifact = artifacts("llama", "hydra++")
    prompt = list(range(3, 40))
    expected = Generator.load(artifact).generate_ids(prompt, 30)[0]
    monkeypatch.setattr(mapped_pages, "MIN_MAPPING_BYTES", 1)
    released, reread = [], []
    original, original_reread = mapped_pages.MappedPages.release, mapped_pages.MappedPages.reread_in_small_pages
    monkeypatch.setattr(mapped_pages.MappedPages, "release",
                        lambda self: released.append(len(self.ranges)) or original(self))
    monkeypatch.setattr(mapped_pages.MappedPages, "reread_in_small_pages",
                        lambda self: reread.append(len(self.ranges)) or original_reread(self))
    generator = Generator.load(artifact)
    assert len(reread) == 1 and reread[0] > 0  # once, when the session is ready
    released.clear()  # the reread releases first
    tokens, stats = generator.generate_ids(prompt, 30)
    assert tokens == expected
    assert len(released) == 1 + stats.steps and released[0] > 0  # the prefill, then every step


def test_tensorrt_builds_default_to_bf16_where_the_gpu_has_it(monkeypatch):
    from hydra_export import tensorrt_build
    from hydra_export.artifact_builder import BuildOptions

    class FakeCuda:
        capability = (8, 0)

        def compute_capability(self, device):
            return self.capability

    monkeypatch.setattr(tensorrt_build, "check_tensorrt_available", lambda: "10.9")
    monkeypatch.setattr(CudaRuntime, "load", classmethod(lambda cls: FakeCuda()))
    assert BuildOptions("", target="tensorrt").resolved_dtype == "bf16"  # Ampere and later
    FakeCuda.capability = (7, 5)
    assert BuildOptions("", target="tensorrt").resolved_dtype == "fp16"  # Turing: no bf16 tensor cores
    assert BuildOptions("", target="tensorrt", dtype="fp32").resolved_dtype == "fp32"
    assert BuildOptions("").resolved_dtype == "fp32"


def test_bf16_plans_are_compared_with_pytorch(llama):
    """ONNX Runtime has no bf16 kernels, so a bf16 plan's reference is the PyTorch module. The runner
    is faked by the module itself (no GPU here): K/V reach it as bf16 torch tensors, outputs are compared
    as float32, and a wrong output fails the check."""
    import copy

    import torch

    from conftest import random_heads
    from hydra_export.artifact_verifier import KV_NUMPY, engine_cases
    from hydra_export.export.graph_specs import TorchEngine, build_engine_spec
    from hydra_export.tensorrt_verifier import compare_plan_with_pytorch
    from hydra_runtime import TreeBuffers

    base = copy.copy(llama)
    base.model = copy.deepcopy(llama.model).to(torch.bfloat16)
    heads = random_heads(llama, "hydra++").to(torch.bfloat16)
    tree = TreeBuffers.from_name("tree16", copy_nodes=4)
    spec = build_engine_spec(base, heads, tree, 64, torch.bfloat16)
    torch_engine = TorchEngine(spec)
    empty = {name: np.zeros((1, 0, *spec.sample_inputs[i].shape[2:]), KV_NUMPY["bfloat16"])
             for i, name in enumerate(spec.input_names) if name.startswith("past_key_values")}
    cases = {case: host | empty for case, host in engine_cases([5, 9, 33, 7], tree).items()}

    class ModuleRunner:
        def __init__(self, offset=0.0):
            self.offset = offset

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def infer(self, inputs):
            assert all(value.dtype == torch.bfloat16 for name, value in inputs.items() if name.startswith("past"))
            with torch.no_grad():
                outputs = spec.module(*(inputs[name] for name in spec.input_names))
            return {name: value + self.offset if value.is_floating_point() else value
                    for name, value in zip(spec.output_names, outputs)}

    rows, passed = compare_plan_with_pytorch(ModuleRunner(), torch_engine, cases, tolerance=1e-1)
    assert passed and rows and {row.graph for row in rows} == {f"{case} [tensorrt]" for case in cases}
    rows, passed = compare_plan_with_pytorch(ModuleRunner(offset=1.0), torch_engine, cases, tolerance=1e-1)
    assert not passed
