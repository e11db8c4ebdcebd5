import random

import numpy as np
import pytest
import torch

from conftest import random_heads
from oracle_heads import OracleHeads

from hydra_export.decoding.kv_cache import keep_accepted
from hydra_export.decoding.reference_decoder import ReferenceDecoder, tree_attention_bias
from hydra_runtime import GenerationInputError, TreeBuffers
from hydra_runtime.sampling import SamplingConfig


def autoregressive(base, prompt, max_new_tokens, eos=None):
    out = base.model.generate(
        torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=eos, pad_token_id=0,
    )
    return out[0, len(prompt):].tolist()


def random_prompts(count, seed, vocab=128):
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randrange(1, 24))] for _ in range(count)]


@pytest.mark.parametrize("kind", ["medusa", "hydra", "hydra++"])
@pytest.mark.parametrize("tree_name", ["chain4", "tree16", "mc_sim_7b_63"])
def test_greedy_speculation_equals_autoregressive(base, kind, tree_name):
    heads = random_heads(base, kind)
    decoder = ReferenceDecoder(base, heads, TreeBuffers.from_name(tree_name))
    for i, prompt in enumerate(random_prompts(4, seed=len(kind) * 31 + len(tree_name))):
        max_new = 8 + 9 * i
        result = decoder.generate(prompt, max_new)
        assert result.tokens == autoregressive(base, prompt, max_new)
        assert sum(result.accepted_lengths) + 1 >= len(result.tokens)


@pytest.mark.parametrize("kind", ["medusa", "hydra++"])
def test_draft_vocabulary_heads_stay_lossless(base, kind):
    heads = random_heads(base, kind, draft_vocab_size=40)
    decoder = ReferenceDecoder(base, heads, TreeBuffers.from_name("mc_sim_7b_63"))
    allowed = set(heads.draft_vocab.tolist())
    drafted = decoder.draft(7, torch.randn(base.config.hidden_size))
    assert set(drafted[1:].tolist()) <= allowed
    for prompt in random_prompts(3, seed=21):
        assert decoder.generate(prompt, 30).tokens == autoregressive(base, prompt, 30)


@pytest.mark.parametrize("tree_name", ["chain4", "tree8", "mc_sim_7b_63"])
def test_oracle_heads_accept_full_depth_and_stay_exact(base, tree_name):
    tree = TreeBuffers.from_name(tree_name)
    for prompt in random_prompts(3, seed=5):
        expected = autoregressive(base, prompt, 40)
        oracle = OracleHeads(base.config, prompt + expected)
        result = ReferenceDecoder(base, oracle, tree).generate(prompt, 40)
        assert result.tokens == expected
        # Every full step emits depth + 1 tokens (the last step may be cut by max_new_tokens).
        assert all(n == tree.max_depth + 1 for n in result.accepted_lengths[:-1])


def test_stops_at_eos_like_generate(llama):
    heads = random_heads(llama, "hydra")
    decoder = ReferenceDecoder(llama, heads, TreeBuffers.from_name("tree16"))
    prompt = random_prompts(1, seed=11)[0]
    free_run = autoregressive(llama, prompt, 30)
    eos = free_run[12]  # pretend a token of the continuation is EOS
    result = decoder.generate(prompt, 30, eos_token_ids=(eos,))
    assert result.stop_reason == "eos"
    assert result.tokens == autoregressive(llama, prompt, 30, eos=eos)


def test_context_limit_ends_cleanly_with_truncated_trees(llama):
    heads = random_heads(llama, "hydra")
    prompt = random_prompts(1, seed=3)[0]
    max_seq_len = len(prompt) + 21
    decoder = ReferenceDecoder(llama, OracleHeads(llama.config, prompt + autoregressive(llama, prompt, 40)),
                               TreeBuffers.from_name("mc_sim_7b_63"), max_seq_len=max_seq_len)
    result = decoder.generate(prompt, 100)
    assert result.stop_reason == "context"
    assert result.tokens == autoregressive(llama, prompt, 21)
    decoder = ReferenceDecoder(llama, heads, TreeBuffers.from_name("tree16"), max_seq_len=max_seq_len)
    assert decoder.generate(prompt, 100).tokens == autoregressive(llama, prompt, 21)


def test_prompt_longer_than_context_is_refused(llama):
    decoder = ReferenceDecoder(llama, random_heads(llama, "medusa"), TreeBuffers.from_name("chain4"), max_seq_len=16)
    with pytest.raises(GenerationInputError, match="Shorten the prompt"):
        decoder.generate(list(range(3, 19)), 4)


def test_speculative_sampling_is_seeded_and_respects_limits(qwen2):
    decoder = ReferenceDecoder(qwen2, random_heads(qwen2, "hydra++"), TreeBuffers.from_name("tree16"))
    sampling = SamplingConfig(temperature=0.8)
    runs = [decoder.generate([5, 6, 7], 25, sampling=sampling, seed=0).tokens for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 25
    other = decoder.generate([5, 6, 7], 25, sampling=sampling, seed=1)
    assert other.tokens != runs[0]


def test_keep_accepted_moves_entries(llama):
    from transformers import DynamicCache

    cache = DynamicCache(config=llama.config)
    keys = torch.arange(2 * 10, dtype=torch.float32).reshape(1, 2, 10, 1)
    for layer in range(llama.config.num_hidden_layers):
        cache.update(keys, -keys, layer)
    keep_accepted(cache, past_length=4, accepted_nodes=torch.tensor([0, 2, 5]))
    np.testing.assert_array_equal(cache.layers[0].keys[0, 0, :, 0].numpy(), [0, 1, 2, 3, 4, 6, 9])
    np.testing.assert_array_equal(cache.layers[0].values[0, 1, :, 0].numpy(), -np.array([10, 11, 12, 13, 14, 16, 19]))


def test_tree_attention_bias_layout():
    tree = TreeBuffers.from_choices([[0], [1]])
    bias = tree_attention_bias(2, tree.attention_mask, torch.float32)[0, 0]
    allowed = (bias == 0).int().tolist()
    assert allowed == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 1]]


@pytest.mark.parametrize("kind", ["medusa", "hydra", "hydra++"])
def test_copy_chain_stays_lossless_and_is_accepted_past_the_heads_depth(base, kind):
    tree = TreeBuffers.from_name("tree8", copy_nodes=8)  # heads draft 3 deep, the chain 8
    decoder = ReferenceDecoder(base, random_heads(base, kind), tree)
    longest = 0
    for prompt in random_prompts(3, seed=17):
        result = decoder.generate(prompt, 60)
        assert result.tokens == autoregressive(base, prompt, 60)
        longest = max(longest, *result.accepted_lengths)
    assert longest > tree.max_depth + 1  # only the copy chain reaches that far (random models repeat themselves)


def test_copy_chain_with_speculative_sampling_is_seeded(qwen2):
    decoder = ReferenceDecoder(qwen2, random_heads(qwen2, "hydra"), TreeBuffers.from_name("tree8", copy_nodes=4))
    sampling = SamplingConfig(temperature=0.7)
    runs = [decoder.generate([5, 6, 7, 5, 6], 30, sampling=sampling, seed=3).tokens for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 30


def test_copy_chain_shrinks_at_the_end_of_the_context(llama):
    prompt = random_prompts(1, seed=3)[0]
    max_seq_len = len(prompt) + 21
    decoder = ReferenceDecoder(llama, random_heads(llama, "hydra"), TreeBuffers.from_name("chain4", copy_nodes=8),
                               max_seq_len=max_seq_len)
    result = decoder.generate(prompt, 100)
    assert result.stop_reason == "context" and result.tokens == autoregressive(llama, prompt, 21)
