import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import tiny_llama, tiny_qwen2  # noqa: E402

from hydra_export.heads import build_heads, heads_config_for  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"  # shipped with the repository (data/README.md)


def invoke(*args):
    """Run the CLI in-process; no input a user can give may print a traceback."""
    from typer.testing import CliRunner

    from hydra_export.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def pytest_collection_modifyitems(config, items):
    """GPU-marked tests run (with -m gpu) only where a CUDA device is visible."""
    from hydra_runtime.backends.choice import gpu_count

    if any("gpu" in item.keywords for item in items) and not gpu_count():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none visible)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def llama():
    return tiny_llama()


@pytest.fixture(scope="session")
def qwen2():
    return tiny_qwen2()


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def base(request):
    return request.getfixturevalue(request.param)


def random_heads(base, kind: str, seed: int = 1, draft_vocab_size: int = 0, **overrides):
    """Heads with random (not identity) weights, so every block and projection matters.
    With draft_vocab_size, they draft from a random token subset of that size."""
    import dataclasses

    torch.manual_seed(seed)
    config = dataclasses.replace(heads_config_for(kind, base.config, **overrides), draft_vocab_size=draft_vocab_size)
    heads = build_heads(config, base.config)
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter.normal_(std=0.2)
        if draft_vocab_size:
            heads.draft_vocab.copy_(torch.randperm(base.config.vocab_size)[:draft_vocab_size])
    return heads


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """Tiny models saved as Hugging Face directories with a tokenizer, as a user would have them."""
    from tiny_tokenizer import tiny_tokenizer

    dirs = {}
    for name, make in (("llama", tiny_llama), ("qwen2", tiny_qwen2)):
        base = make()
        base.tokenizer = tiny_tokenizer()
        dirs[name] = tmp_path_factory.mktemp(f"{name}-model")
        base.save(dirs[name])
    return dirs


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory, model_dirs):
    """Artifacts built once per (model, head kind, tree, max_seq_len, ...) and shared by the tests.
    They carry a copy chain unless ``copy_nodes=0``, like the CLI's default."""
    from hydra_export.artifact_builder import BuildOptions, build_artifact
    from hydra_export.base_model import load_base_model
    from hydra_export.heads.checkpoint import save_heads
    from hydra_runtime import TreeBuffers

    built = {}

    def get(model: str, kind: str, tree: str = "tree16", max_seq_len: int = 256, draft_vocab_size: int = 0,
            dtype: str = "fp32", target: str = "onnx", copy_nodes: int = 4):
        key = (model, kind, tree, max_seq_len, draft_vocab_size, dtype, target, copy_nodes)
        if key not in built:
            base = load_base_model(model_dirs[model])
            heads = random_heads(base, kind, draft_vocab_size=draft_vocab_size)
            root = tmp_path_factory.mktemp("artifact")
            save_heads(heads, root / "heads")
            options = BuildOptions(tree_name=tree, max_seq_len=max_seq_len, dtype=dtype, target=target)
            built[key] = build_artifact(base, heads, TreeBuffers.from_name(tree, copy_nodes=copy_nodes), root / "artifact",
                                         options)
        return built[key]

    return get
