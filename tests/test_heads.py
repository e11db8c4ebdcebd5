import json

import pytest
import torch

from conftest import random_heads

from hydra_export.heads import HEAD_TYPES, BaseProjections
from hydra_export.heads.checkpoint import load_native_heads, save_heads, unique_tensors
from hydra_export.heads.reference_formats import load_heads
from hydra_runtime import HeadsCheckpointError


def projections(base):
    return BaseProjections(base.embed_tokens, base.lm_head)


@pytest.mark.parametrize("kind", sorted(HEAD_TYPES))
def test_draft_logits_shapes(llama, kind):
    heads = random_heads(llama, kind)
    for k in range(heads.config.num_heads):
        path = torch.randint(0, 128, (3, k + 1))
        assert heads.draft_logits(k, torch.randn(3, 64), path, projections(llama)).shape == (3, 128)


def test_hydra_heads_depend_on_the_speculated_path_and_medusa_does_not(llama):
    context = torch.randn(1, 64).expand(2, -1)
    paths = torch.tensor([[5, 6], [5, 7]])
    hydra = random_heads(llama, "hydra").draft_logits(1, context, paths, projections(llama))
    medusa = random_heads(llama, "medusa").draft_logits(1, context, paths, projections(llama))
    assert not torch.allclose(hydra[0], hydra[1])
    torch.testing.assert_close(medusa[0], medusa[1])


def test_hydra_plus_plus_context_layer_is_causal_and_cached(llama):
    heads = random_heads(llama, "hydra++")
    hidden = torch.randn(1, 6, 64)
    full = heads.context(hidden, torch.arange(6)[None], heads.new_context_cache())
    cache = heads.new_context_cache()
    first = heads.context(hidden[:, :4], torch.arange(4)[None], cache)
    rest = heads.context(hidden[:, 4:], torch.arange(4, 6)[None], cache)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=1e-5)


def test_untrained_blocks_start_near_pass_through(llama):
    from hydra_export.heads import build_heads, heads_config_for

    heads = build_heads(heads_config_for("medusa", llama.config), llama.config)
    x = torch.randn(2, 64)
    bias = heads.mlps[0][0].linear.bias
    torch.testing.assert_close(heads.head_hidden(0, x, torch.empty(2, 1, 64)), x + torch.nn.functional.silu(bias))


def test_saving_heads_keeps_what_else_is_in_the_folder(tmp_path, llama):
    """Retraining into a heads folder replaces the two heads files only: a tree.json grown for the
    heads, or anything the user put there, stays; files are readable like any other."""
    import os
    import stat

    folder = tmp_path / "heads"
    save_heads(random_heads(llama, "hydra", seed=1), folder)
    (folder / "tree.json").write_text('{"choices": [[0]]}')
    (folder / "notes").mkdir()
    save_heads(random_heads(llama, "hydra", seed=2), folder)
    assert (folder / "tree.json").read_text() == '{"choices": [[0]]}' and (folder / "notes").is_dir()
    assert sorted(p.name for p in folder.iterdir()) == ["heads.safetensors", "heads_config.json", "notes", "tree.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((folder / "heads.safetensors").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    loaded = load_heads(folder, llama.config)
    for name, tensor in unique_tensors(random_heads(llama, "hydra", seed=2)).items():
        torch.testing.assert_close(unique_tensors(loaded)[name], tensor)


@pytest.mark.parametrize("kind", sorted(HEAD_TYPES))
@pytest.mark.parametrize("own_lm_head", [False, True])
def test_native_round_trip(tmp_path, qwen2, kind, own_lm_head):
    heads = random_heads(qwen2, kind, own_lm_head=own_lm_head)
    save_heads(heads, tmp_path / "heads")
    loaded = load_heads(tmp_path / "heads", qwen2.config)
    assert loaded.config == heads.config
    for name, tensor in unique_tensors(heads).items():
        torch.testing.assert_close(unique_tensors(loaded)[name], tensor)


def test_reused_lm_head_keeps_checkpoint_small(tmp_path, llama):
    save_heads(random_heads(llama, "hydra"), tmp_path / "shared")
    save_heads(random_heads(llama, "hydra", own_lm_head=True), tmp_path / "own")
    size = lambda d: (tmp_path / d / "heads.safetensors").stat().st_size  # noqa: E731
    assert size("shared") + 4 * 64 * 128 * 4 <= size("own")


def test_native_load_lists_missing_and_unexpected(tmp_path, llama):
    from safetensors.torch import load_file, save_file

    save_heads(random_heads(llama, "hydra"), tmp_path / "heads")
    weights = tmp_path / "heads" / "heads.safetensors"
    tensors = load_file(str(weights))
    tensors["stray.weight"] = tensors.pop("mlps.0.0.linear.weight")
    save_file(tensors, str(weights))
    with pytest.raises(HeadsCheckpointError, match=r"missing tensors: mlps\.0\.0\.linear\.weight.*stray\.weight"):
        load_native_heads(tmp_path / "heads", llama.config)


def test_native_load_names_shape_mismatch(tmp_path, llama):
    from safetensors.torch import load_file, save_file

    save_heads(random_heads(llama, "medusa"), tmp_path / "heads")
    weights = tmp_path / "heads" / "heads.safetensors"
    tensors = load_file(str(weights))
    tensors["mlps.1.0.linear.bias"] = torch.zeros(3)
    save_file(tensors, str(weights))
    with pytest.raises(HeadsCheckpointError, match=r"mlps\.1\.0\.linear\.bias: checkpoint \(3,\) vs model \(64,\)"):
        load_native_heads(tmp_path / "heads", llama.config)


def test_missing_heads_dir_says_how_to_get_heads(tmp_path, llama):
    with pytest.raises(HeadsCheckpointError, match="hydra-export train"):
        load_heads(tmp_path / "nope", llama.config)


# --- reference layouts, written here the way the reference repositories save them ---------

def write_hydra_reference(directory, base, arch: str, num_heads=3, num_layers=3, seed=0):
    """zankner/Hydra layout: Sequential(Dropout, ResBlock, Dropout, ResBlock, ...) per head, the
    blocks after the first being ONE module (so their tensors repeat under every index)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.1  # noqa: E731
    hidden, vocab = base.config.hidden_size, base.config.vocab_size
    state = {}
    for k in range(num_heads):
        width = hidden * (k + 2)
        state[f"hydra_mlp.{k}.1.linear.weight"] = rnd(hidden, width)
        state[f"hydra_mlp.{k}.1.linear.bias"] = rnd(hidden)
        state[f"hydra_mlp.{k}.1.res_connection.weight"] = rnd(hidden, width)
        state[f"hydra_mlp.{k}.1.res_connection.bias"] = rnd(hidden)
        shared_weight, shared_bias = rnd(hidden, hidden), rnd(hidden)
        for j in range(1, num_layers):
            state[f"hydra_mlp.{k}.{2 * j + 1}.linear.weight"] = shared_weight
            state[f"hydra_mlp.{k}.{2 * j + 1}.linear.bias"] = shared_bias
        state[f"hydra_lm_head.{k}.1.weight"] = rnd(vocab, hidden)
        state[f"hydra_lm_head.{k}.1.bias"] = rnd(vocab)
    if arch == "prefix-mlp":
        from hydra_export.heads.hydra_plus_plus import HydraPlusPlusHeads  # a layer of the right shapes

        layer = random_heads(base, "hydra++")
        for name, tensor in layer.prefix_layer.state_dict().items():
            state[f"prefix_embeding_layer.layers.0.{name}"] = rnd(*tensor.shape)
        state["prefix_embeding_layer.norm.weight"] = rnd(hidden)
        state["prefix_embeding_layer.embed_tokens.weight"] = rnd(vocab, hidden)  # unused upstream too
        assert HydraPlusPlusHeads.kind == "hydra++"
    directory.mkdir()
    torch.save(state, directory / "hydra_lm_head.pt")
    (directory / "config.json").write_text(json.dumps({
        "hydra_num_heads": num_heads, "hydra_num_layers": num_layers, "hydra_head_arch": arch,
        "grounded_heads": True, "base_model_name_or_path": "tiny",
    }))
    return state


@pytest.mark.parametrize("arch, kind", [("mlp", "hydra"), ("prefix-mlp", "hydra++")])
def test_hydra_reference_checkpoint_loads_every_tensor(tmp_path, llama, arch, kind):
    state = write_hydra_reference(tmp_path / "ref", llama, arch)
    heads = load_heads(tmp_path / "ref", llama.config)
    assert heads.kind == kind and heads.config.shared_blocks
    # The shared quirk is reproduced: blocks 1 and 2 of a head are one module.
    assert heads.mlps[0][1] is heads.mlps[0][2]
    torch.testing.assert_close(heads.mlps[2][0].skip.weight, state["hydra_mlp.2.1.res_connection.weight"])
    torch.testing.assert_close(heads.mlps[1][2].linear.bias, state["hydra_mlp.1.5.linear.bias"])
    torch.testing.assert_close(heads.lm_heads[0].bias, state["hydra_lm_head.0.1.bias"])
    if kind == "hydra++":
        torch.testing.assert_close(
            heads.prefix_layer.self_attn.q_proj.weight, state["prefix_embeding_layer.layers.0.self_attn.q_proj.weight"]
        )
        torch.testing.assert_close(heads.prefix_norm.weight, state["prefix_embeding_layer.norm.weight"])
    # Forward equals the reference formula for head 1: lm(block(block(res(x) + silu(lin(x))))).
    x = torch.cat([torch.randn(1, 64), llama.embed_tokens(torch.tensor([[3, 4]])).flatten(1)], dim=-1)
    silu = torch.nn.functional.silu
    h = x @ state["hydra_mlp.1.1.res_connection.weight"].T + state["hydra_mlp.1.1.res_connection.bias"]
    h = h + silu(x @ state["hydra_mlp.1.1.linear.weight"].T + state["hydra_mlp.1.1.linear.bias"])
    for j in (1, 2):
        h = h + silu(h @ state[f"hydra_mlp.1.{2 * j + 1}.linear.weight"].T + state[f"hydra_mlp.1.{2 * j + 1}.linear.bias"])
    expected = h @ state["hydra_lm_head.1.1.weight"].T + state["hydra_lm_head.1.1.bias"]
    got = heads.draft_logits(1, x[:, :64], torch.tensor([[3, 4]]), projections(llama))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_hydra_reference_leftover_tensor_fails(tmp_path, llama):
    state = write_hydra_reference(tmp_path / "ref", llama, "mlp")
    state["hydra_extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "ref" / "hydra_lm_head.pt")
    with pytest.raises(HeadsCheckpointError, match="nothing maps to: hydra_extra.weight"):
        load_heads(tmp_path / "ref", llama.config)


def test_medusa_reference_checkpoint(tmp_path, llama):
    hidden, vocab = 64, 128
    shared = {"w": torch.randn(hidden, hidden) * 0.1, "b": torch.randn(hidden) * 0.1}
    state = {}
    for k in range(2):
        for j in range(2):  # `[ResBlock] * 2`: one module, its tensors under both indices
            state[f"{k}.{j}.linear.weight"] = shared["w"]
            state[f"{k}.{j}.linear.bias"] = shared["b"]
        state[f"{k}.2.weight"] = torch.randn(vocab, hidden)
    (tmp_path / "m").mkdir()
    torch.save(state, tmp_path / "m" / "medusa_lm_head.pt")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"medusa_num_heads": 2, "medusa_num_layers": 2}))
    heads = load_heads(tmp_path / "m", llama.config)
    assert heads.kind == "medusa" and heads.config.shared_blocks and heads.mlps[1][0] is heads.mlps[1][1]
    x = torch.randn(1, hidden)
    silu = torch.nn.functional.silu
    h = x + silu(x @ shared["w"].T + shared["b"])
    h = h + silu(h @ shared["w"].T + shared["b"])
    got = heads.draft_logits(1, x, torch.tensor([[1, 2]]), projections(llama))
    torch.testing.assert_close(got, h @ state["1.2.weight"].T, atol=1e-5, rtol=1e-5)


def test_draft_candidates_come_from_the_draft_vocabulary(tmp_path, llama):
    heads = random_heads(llama, "hydra", draft_vocab_size=16)
    context, path = torch.randn(3, 64), torch.randint(0, 128, (3, 2))
    candidates = heads.draft_candidates(1, context, path, projections(llama), top_k=4)
    # Written out: the full-vocabulary logits restricted to the subset, best first.
    full = heads.draft_logits(1, context, path, projections(llama))[:, heads.draft_vocab]
    expected = heads.draft_vocab[full.topk(4, dim=-1).indices]
    assert torch.equal(candidates, expected)
    save_heads(heads, tmp_path / "heads", dtype=torch.float16)
    loaded = load_heads(tmp_path / "heads", llama.config)
    assert torch.equal(loaded.draft_vocab, heads.draft_vocab) and loaded.draft_vocab.dtype == torch.int64


def _artifact_copy(artifacts, tmp_path, kind="hydra++"):
    import shutil

    target = tmp_path / "artifact"
    shutil.copytree(artifacts("llama", kind), target)
    return target


@pytest.mark.parametrize("kind", ["hydra++", "medusa"])
def test_artifact_heads_are_stored_once_and_load_whole(artifacts, llama, kind):
    """The engine holds the heads it drafts with; the artifact's heads/ keeps only the rest,
    and loading joins the two into the heads the artifact was built from."""
    import json

    from conftest import random_heads
    from hydra_export.heads.checkpoint import unique_tensors
    from hydra_export.heads.in_artifact import INDEX_FILE
    from safetensors import safe_open

    artifact = artifacts("llama", kind)
    index = json.loads((artifact / "heads" / INDEX_FILE).read_text())["tensors"]
    with safe_open(str(artifact / "heads" / "heads.safetensors"), "pt") as handle:
        kept = set(handle.keys())
    original = unique_tensors(random_heads(llama, kind))  # what the artifacts fixture built from
    assert "mlps.0.0.linear.weight" in index and not kept & set(index)
    assert kept | set(index) == set(original)
    loaded = unique_tensors(load_heads(artifact / "heads", llama.config))
    for name, tensor in original.items():
        assert torch.equal(loaded[name].to(tensor.dtype), tensor), name


def test_hostile_artifact_heads_index_is_refused(artifacts, llama, tmp_path):
    import json

    from hydra_export.heads.in_artifact import INDEX_FILE
    from hydra_runtime import ArtifactError

    artifact = _artifact_copy(artifacts, tmp_path)
    path = artifact / "heads" / INDEX_FILE
    good = json.loads(path.read_text())
    cases = [
        ({**good, "engine": "../engine.onnx"}, ArtifactError, "not a path inside the artifact"),
        ({**good, "tensors": {"mlps.0.0.linear.weight": "no_such_initializer"}}, HeadsCheckpointError,
         "the engine lacks"),
        ({**good, "tensors": {"mlps.0.0.linear.weight": good["tensors"]["mlps.1.0.linear.weight"]}},
         HeadsCheckpointError, "is not the heads'"),
        ({"tensors": []}, HeadsCheckpointError, "malformed"),
        ({**good, "tensors": {"mlps.0.0.linear.weight": ["a list"]}}, HeadsCheckpointError, "malformed"),
    ]
    for index, error, message in cases:
        path.write_text(json.dumps(index))
        with pytest.raises(error, match=message):
            load_heads(artifact / "heads", llama.config)
    # A weights file cut short: the initializer's bytes are no longer there.
    path.write_text(json.dumps(good))
    weights = artifact / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(HeadsCheckpointError, match="do not hold"):
        load_heads(artifact / "heads", llama.config)
