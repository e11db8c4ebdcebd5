"""The ONNX artifact end to end: graphs vs PyTorch, runtime greedy output vs transformers."""

import json
import random
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from hydra_export.artifact_verifier import verify_artifact
from hydra_export.base_model import load_base_model
from hydra_runtime import ArtifactError, GenerationInputError, HydraExportError, InvalidTreeError
from hydra_runtime.generator import Generator
from hydra_runtime.manifest import FORMAT_VERSION


def autoregressive(base, prompt, max_new_tokens):
    """transformers greedy decoding, stopping at the model's EOS like the runtime does."""
    out = base.model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                              eos_token_id=base.config.eos_token_id, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def prompts(count, seed):
    rng = random.Random(seed)
    return [[rng.randrange(3, 128) for _ in range(rng.randrange(1, 30))] for _ in range(count)]


CASES = [("llama", "medusa", 0, 4), ("llama", "hydra", 0, 4), ("llama", "hydra++", 0, 4), ("qwen2", "hydra", 0, 0),
         ("qwen2", "hydra++", 0, 4), ("llama", "hydra++", 40, 4)]


@pytest.mark.parametrize("model, kind, draft_vocab_size, copy_nodes", CASES)
def test_graphs_match_pytorch_and_output_is_lossless(artifacts, model_dirs, model, kind, draft_vocab_size,
                                                     copy_nodes):
    artifact = artifacts(model, kind, draft_vocab_size=draft_vocab_size, copy_nodes=copy_nodes)
    report = verify_artifact(artifact, model=str(model_dirs[model]))
    assert report.comparisons and all(c.max_abs_error < 1e-4 for c in report.comparisons)
    assert all(c.exact for c in report.comparisons if c.exact is not None)
    assert report.lossless and report.passed

    base = load_base_model(model_dirs[model])
    generator = Generator.load(artifact)
    for i, prompt in enumerate(prompts(4, seed=len(kind))):
        expected = autoregressive(base, prompt, 10 + 12 * i)
        for mode in ("hydra", "autoregressive"):
            ids, stats = generator.generate_ids(prompt, 10 + 12 * i, mode=mode)
            assert ids == expected, (mode, prompt)


def test_fused_step_accepts_long_paths(artifacts, model_dirs):
    # This tiny Llama falls into a loop that untrained-but-random Medusa heads predict,
    # so the step graph accepts deep paths whose nodes are not contiguous (tree16: 0, 1, 5, 11, 15).
    generator = Generator.load(artifacts("llama", "medusa"))
    base = load_base_model(model_dirs["llama"])
    prompt = [5, 9, 33, 7, 100]
    ids, stats = generator.generate_ids(prompt, 60)
    assert ids == autoregressive(base, prompt, 60)
    assert max(stats.accepted_lengths) == 5 and stats.mean_accepted_length > 2.5


def test_copy_chain_is_accepted_past_the_heads_depth(artifacts, model_dirs):
    # tree8 drafts 3 deep; the chain of 8 copies the loop this tiny Llama falls into.
    generator = Generator.load(artifacts("llama", "medusa", tree="tree8", copy_nodes=8, max_seq_len=40))
    base = load_base_model(model_dirs["llama"])
    prompt = [5, 9, 33, 7, 100]
    ids, stats = generator.generate_ids(prompt, 30)
    assert ids == autoregressive(base, prompt, 30)
    assert max(stats.accepted_lengths) == 9  # all 8 chain nodes and the root's successor


def test_context_limit_falls_back_and_stops_cleanly(artifacts, model_dirs):
    generator = Generator.load(artifacts("llama", "medusa", tree="tree8", copy_nodes=8, max_seq_len=40))
    base = load_base_model(model_dirs["llama"])
    prompt = [5, 9, 33, 7, 100, 17, 18]
    ids, stats = generator.generate_ids(prompt, 500)
    assert stats.stop_reason == "context" and len(prompt) + len(ids) == 40
    assert ids == autoregressive(base, prompt, 40 - len(prompt))
    with pytest.raises(GenerationInputError, match="accepts 1 to 39.*Shorten the prompt"):
        generator.generate_ids(list(range(3, 43)), 5)


def test_chat_prompt_matches_transformers_template(artifacts, model_dirs):
    from transformers import AutoTokenizer

    generator = Generator.load(artifacts("llama", "hydra"))
    messages = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Yo."},
                {"role": "user", "content": "Sky?"}]
    expected = AutoTokenizer.from_pretrained(model_dirs["llama"]).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert generator.encode(messages) == list(expected)
    out = generator.generate("Why?", max_new_tokens=12)
    assert len(out.token_ids) == 12 and out.text == generator.tokenizer.decode(out.token_ids)
    assert "".join(generator.stream("Why?", max_new_tokens=12)) == out.text


@pytest.mark.parametrize("model, kind", [("llama", "hydra++"), ("qwen2", "medusa")])
def test_seeded_sampling_matches_the_reference_decoder(artifacts, model_dirs, model, kind):
    from hydra_export.decoding.reference_decoder import ReferenceDecoder
    from hydra_export.heads.reference_formats import load_heads
    from hydra_runtime.sampling import SamplingConfig

    artifact = artifacts(model, kind)
    report = verify_artifact(artifact, model=str(model_dirs[model]))
    assert {"prefill, sampled", "tree step + 4 copies", "autoregressive step"} <= {c.graph for c in report.comparisons}
    assert report.passed
    generator = Generator.load(artifact)
    base = load_base_model(model_dirs[model])
    heads = load_heads(artifact / "heads", base.config)
    assert generator.tree.copy_nodes == 4  # the reference decodes with the artifact's tree, chain included
    decoder = ReferenceDecoder(base, heads, generator.tree, max_seq_len=256)
    sampling = SamplingConfig(temperature=0.9)
    for seed, prompt in enumerate(prompts(3, seed=9)):
        expected = decoder.generate(prompt, 30, eos_token_ids=(2,), sampling=sampling, seed=seed).tokens
        ids, _ = generator.generate_ids(prompt, 30, sampling=sampling, seed=seed)
        assert ids == expected
    greedy, _ = generator.generate_ids(prompts(1, seed=1)[0], 30)
    sampled = [generator.generate_ids(prompts(1, seed=1)[0], 30, temperature=1.0, seed=s)[0] for s in range(3)]
    assert any(run != greedy for run in sampled)
    ar, stats = generator.generate_ids(prompts(1, seed=1)[0], 30, mode="autoregressive", temperature=1.0, seed=0)
    assert len(ar) >= 1 and stats.accepted_lengths == []


def test_bad_generation_requests(artifacts):
    generator = Generator.load(artifacts("llama", "hydra"))
    with pytest.raises(GenerationInputError, match="temperature must be a finite number >= 0"):
        generator.generate("x", temperature=-1)
    with pytest.raises(GenerationInputError, match="unknown mode 'fast'"):
        generator.generate("x", mode="fast")
    with pytest.raises(GenerationInputError, match="'role' and 'content'"):
        generator.generate([{"text": "x"}])


@pytest.fixture
def broken_copy(artifacts, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(artifacts("llama", "hydra"), target)
    return target


def test_missing_file_is_named(broken_copy):
    (broken_copy / "engine.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"engine\.onnx is missing; rebuild"):
        Generator.load(broken_copy)


def test_checksum_mismatch_is_named(broken_copy):
    with open(broken_copy / "weights.bin", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x01\x02\x03")
    with pytest.raises(ArtifactError, match=r"weights\.bin does not match its sha256"):
        Generator.load(broken_copy)


def test_unknown_format_version(broken_copy):
    manifest = json.loads((broken_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (broken_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"format version 99 but this runtime reads version {FORMAT_VERSION}"):
        Generator.load(broken_copy)


def test_malformed_tree_in_manifest(broken_copy):
    manifest = json.loads((broken_copy / "manifest.json").read_text())
    manifest["tree"]["choices"].append([7, 7])
    (broken_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidTreeError, match=r"\[7, 7\] has no parent"):
        Generator.load(broken_copy)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="manifest.json is missing.*hydra-export build"):
        Generator.load(tmp_path)


def test_runtime_never_imports_torch(artifacts):
    artifact = artifacts("llama", "hydra++")
    script = textwrap.dedent(f"""
        import sys
        for blocked in ("torch", "transformers"):
            sys.modules[blocked] = None  # any import of them now fails
        from hydra_runtime import Generator  # the import README.md shows
        out = Generator.load({str(artifact)!r}).generate("Hello", max_new_tokens=8)
        assert len(out.token_ids) == 8
        print("ok", out.stats.steps)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_half_precision_artifacts(tmp_path, model_dirs):
    """fp16 graphs run on ONNX Runtime CPU; bf16 graphs (for GPUs) are valid ONNX with bf16 K/V."""
    import onnx

    from hydra_export.artifact_builder import BuildOptions, build_artifact
    from hydra_runtime import TreeBuffers
    from conftest import random_heads

    base = load_base_model(model_dirs["llama"])
    heads = random_heads(base, "hydra++")
    for dtype, kv_dtype in (("fp16", "float16"), ("bf16", "bfloat16")):
        out = build_artifact(base, heads, TreeBuffers.from_name("tree8"), tmp_path / dtype,
                             BuildOptions("tree8", dtype=dtype, max_seq_len=128))
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["kv_cache"]["dtype"] == kv_dtype
        inputs = {i["name"]: i["dtype"] for i in manifest["engine"]["inputs"]}
        assert inputs["past_key_values.0.key"] == ("float16" if dtype == "fp16" else "bfloat16")
        onnx.checker.check_model(str(out / "engine.onnx"))
    assert base.model.dtype == torch.float32  # the caller's model is left as it was
    ids, _ = Generator.load(tmp_path / "fp16").generate_ids([5, 6, 7], 12)
    assert len(ids) == 12
    with pytest.raises(ArtifactError, match="KV cache is bfloat16.*--backend tensorrt"):
        Generator.load(tmp_path / "bf16", backend="cpu")
    with pytest.raises(HydraExportError, match="bf16 and has no TensorRT plan.*--target tensorrt"):
        verify_artifact(tmp_path / "bf16", model=str(model_dirs["llama"]))


def test_one_session_serves_every_kind_of_call(artifacts, monkeypatch):
    """The weights are held once: prefill, tree steps, autoregressive and sampled decoding all run on one
    ONNX Runtime session of the artifact's one engine."""
    import onnxruntime

    sessions = []
    original = onnxruntime.InferenceSession

    class Counting(original):
        def __init__(self, path, *args, **kwargs):
            sessions.append(path)
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Counting)
    artifact = artifacts("llama", "hydra++")
    assert sorted(p.name for p in artifact.glob("*.onnx")) == ["engine.onnx"]
    generator = Generator.load(artifact)
    for settings in (dict(), dict(mode="autoregressive"), dict(temperature=0.8, seed=3)):
        assert len(generator.generate_ids([5, 9, 33], 12, **settings)[0]) == 12
    assert sessions == [str(artifact / "engine.onnx")]
