import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hydra_export.base_model import load_base_model, wrap_model
from hydra_export.default_models import DEFAULT_MODEL, cache_root
from hydra_runtime import UnsupportedModelError


def test_unsupported_architecture_lists_supported():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported.*llama, mistral, qwen2"):
        wrap_model(model)


def test_hf_directory_round_trip(tmp_path, qwen2):
    qwen2.save(tmp_path / "model")
    loaded = load_base_model(tmp_path / "model")
    ids = torch.tensor([[3, 4, 5]])
    torch.testing.assert_close(loaded.model(ids).logits, qwen2.model(ids).logits)
    assert loaded.architecture.model_type == "qwen2"


def test_tied_embeddings_survive_saving(tmp_path, llama):
    llama.save(tmp_path / "model")
    loaded = load_base_model(tmp_path / "model")
    assert loaded.lm_head.weight.data_ptr() == loaded.embed_tokens.weight.data_ptr()


def test_bad_source_says_what_is_accepted(tmp_path):
    with pytest.raises(UnsupportedModelError, match="Hugging Face directory.*gguf"):
        load_base_model(tmp_path / "missing")


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HYDRA_EXPORT_CACHE", str(tmp_path))
    assert cache_root() == tmp_path


@pytest.mark.slow
def test_default_model_loads_from_gguf_package():
    base = load_base_model(DEFAULT_MODEL)
    assert base.config.model_type == "llama" and base.config.num_hidden_layers == 30
    assert base.config.vocab_size == 49152 and base.tokenizer.chat_template
