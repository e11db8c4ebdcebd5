import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hydra_export.base_model import load_base_model, wrap_model
from hydra_export.default_models import DEFAULT_MODEL, cache_root
from hydra_export.shipped_heads import shipped_heads_dir
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


def test_gguf_file_loads_as_transformers_reads_it_without_accelerate(tmp_path, llama):
    """The default model comes as a GGUF file, and README's install has no accelerate (which
    transformers' from_pretrained demands for GGUF files): the build's main job needs this path."""
    from tiny_gguf import write_tiny_llama_gguf

    path = write_tiny_llama_gguf(llama, tmp_path / "tiny.gguf")
    for source in (path, tmp_path):  # the file, or a folder holding one GGUF file
        loaded = load_base_model(source)
        expected, got = llama.model.state_dict(), loaded.model.state_dict()
        assert set(got) == set(expected)
        assert all(torch.equal(got[name], expected[name]) for name in expected)
        assert loaded.lm_head.weight is loaded.embed_tokens.weight  # still tied
        ids = torch.tensor([[3, 4, 5]])
        torch.testing.assert_close(loaded.model(ids).logits, llama.model(ids).logits)
        assert loaded.tokenizer.convert_ids_to_tokens([3, 4]) == ["<t3>", "<t4>"]


def test_gguf_file_missing_a_tensor_is_refused_by_name(tmp_path, llama):
    from tiny_gguf import write_tiny_llama_gguf

    path = write_tiny_llama_gguf(llama, tmp_path / "tiny.gguf", leave_out=("model.layers.1.mlp.down_proj.weight",))
    with pytest.raises(UnsupportedModelError, match=r"tiny\.gguf.*missing \['model\.layers\.1\.mlp\.down_proj"):
        load_base_model(path)


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


SHIPPED_KINDS = [kind for kind in ("medusa", "hydra", "hydra++") if shipped_heads_dir(DEFAULT_MODEL, kind)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", SHIPPED_KINDS)
def test_default_model_speculation_is_lossless_on_mt_bench(kind):
    import json

    from conftest import DATA
    from hydra_export.decoding.reference_decoder import ReferenceDecoder
    from hydra_export.heads.reference_formats import load_heads
    from hydra_runtime import TreeBuffers

    base = load_base_model(DEFAULT_MODEL)
    heads = load_heads(shipped_heads_dir(DEFAULT_MODEL, kind), base.config)
    decoder = ReferenceDecoder(base, heads, TreeBuffers.from_name("tree16", copy_nodes=8))  # chain included
    lines = (DATA / "mt_bench.jsonl").read_text().splitlines()[:3]
    eos = base.tokenizer.eos_token_id
    for line in lines:
        messages = [{"role": "user", "content": json.loads(line)["turns"][0]}]
        prompt = list(base.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                         return_dict=False))
        expected = base.model.generate(torch.tensor([prompt]), max_new_tokens=48, do_sample=False,
                                       eos_token_id=eos, pad_token_id=eos)[0, len(prompt):].tolist()
        result = decoder.generate(prompt, 48, eos_token_ids=(eos,))
        assert result.tokens == expected
        assert result.mean_accepted_length > 1.0  # trained heads do get accepted


def test_saved_directory_is_a_plain_hugging_face_model(model_dirs, tmp_path):
    """What other tools (onnxruntime-genai's builder, transformers) need of `hydra-export pull`'s output:
    the architecture named, the weights' dtype, and no quantization block left from a GGUF source."""
    import json

    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"model_type": "llama", "architectures": None, "dtype": "float32",
                                       "quantization_config": {"quant_method": "gguf"}}))
    from hydra_export.base_model import clean_saved_config

    clean_saved_config(config_path, "LlamaForCausalLM", "float32")
    config = json.loads(config_path.read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    saved = json.loads((model_dirs["llama"] / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"] and saved["dtype"] == "float32"
    assert "quantization_config" not in saved


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_hides_transformers_progress_bar_and_restores_it(model_dirs, capsys, enabled):
    from transformers.utils import logging

    logging.enable_progress_bar() if enabled else logging.disable_progress_bar()
    try:
        load_base_model(model_dirs["llama"])
        assert "Loading weights" not in capsys.readouterr().err  # our commands draw their own progress
        assert logging.is_progress_bar_enabled() == enabled
    finally:
        logging.enable_progress_bar()
