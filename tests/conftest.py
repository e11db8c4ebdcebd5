import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import tiny_llama, tiny_qwen2  # noqa: E402

from hydra_export.heads import build_heads, heads_config_for  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def llama():
    return tiny_llama()


@pytest.fixture(scope="session")
def qwen2():
    return tiny_qwen2()


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def base(request):
    return request.getfixturevalue(request.param)


def random_heads(base, kind: str, seed: int = 1, **overrides):
    """Heads with random (not identity) weights, so every block and projection matters."""
    torch.manual_seed(seed)
    heads = build_heads(heads_config_for(kind, base.config, **overrides), base.config)
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter.normal_(std=0.2)
    return heads
