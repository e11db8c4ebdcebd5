"""The trainer on a tiny model: a few steps on a handful of records."""

import json
from pathlib import Path

import pytest

from conftest import DATA
from hydra_export.heads.reference_formats import load_heads
from hydra_export.training.recipe import TrainRecipe
from hydra_export.training.trainer import Trainer, cosine_with_warmup
from hydra_runtime import HydraExportError


@pytest.fixture(scope="module")
def tiny_base():
    from tiny_models import tiny_llama
    from tiny_tokenizer import tiny_tokenizer

    base = tiny_llama()
    base.tokenizer = tiny_tokenizer()
    return base


def recipe_for(tmp_path, kind, **overrides):
    settings = dict(kind=kind, output_dir=str(tmp_path / f"{kind}-heads"), data=str(DATA / "alpaca_5000.json"),
                    num_examples=12, max_new_tokens=24, max_seq_len=160, generation_batch_size=6, batch_size=4,
                    epochs=10, learning_rate=1e-2, eval_every=10, checkpoint_every=10, held_out_fraction=0.2)
    settings.update(overrides)
    return TrainRecipe(**settings)


@pytest.mark.parametrize("kind, loss", [("medusa", "ce"), ("hydra", "distill"), ("hydra++", "distill")])
def test_training_lowers_loss_and_writes_loadable_heads(tmp_path, tiny_base, kind, loss):
    recipe = recipe_for(tmp_path, kind, loss=loss, vocab_subset=64 if kind == "hydra" else 0, input_noise=0.01)
    trainer = Trainer(recipe, base=tiny_base)
    cache, train_ids, _, _ = trainer.prepare_data()
    vocab = None
    first, _ = trainer.batch_loss(cache, train_ids[:4], vocab, None)
    summary = trainer.train()
    last, _ = trainer.batch_loss(cache, train_ids[:4], vocab, None)
    assert last.item() < 0.8 * first.item()
    log = summary["log"]
    assert log[0]["step"] == 0 and log[-1]["step"] == summary["steps"] and len(log[-1]["top1"]) == 4
    assert log[-1]["tokens"] > 0 and log[-1]["mean_accepted_length_tree16"] >= 1.0
    simulated = log[-1]["simulated_accepted_length"]  # held-out answers replayed, heads alone and with a chain
    assert set(simulated) == {"mc_sim_7b_63", "mc_sim_7b_63+copy8"} and all(v >= 1.0 for v in simulated.values())
    heads = load_heads(recipe.output_dir, tiny_base.config)
    assert heads.kind == kind
    saved = json.loads((tmp_path / f"{kind}-heads" / "training_log.json").read_text())
    assert saved["steps"] == summary["steps"]


def test_self_distillation_and_resume(tmp_path, tiny_base):
    recipe = recipe_for(tmp_path, "hydra", epochs=2)
    first = Trainer(recipe, base=tiny_base)
    cache, _, _, sequences = first.prepare_data()
    # Responses are the base model's own greedy continuations.
    sample = sequences[0]
    expected = tiny_base.model.generate(
        __import__("torch").tensor([sample["prompt_ids"]]), max_new_tokens=24, do_sample=False,
        eos_token_id=2, pad_token_id=2)[0, len(sample["prompt_ids"]):].tolist()
    assert sample["response_ids"] == expected[: len(sample["response_ids"])]
    lines = (recipe.cache_path / "sequences-self-distill.jsonl").read_text().splitlines()
    assert len(lines) == 12
    first.train()
    # A second run finds the checkpointed step and the cached data and finishes at once.
    second = Trainer(recipe, base=tiny_base)
    summary = second.train()
    assert summary["steps"] == first.train(resume=True)["steps"]


def test_corpus_answers_keep_no_hidden_state_file(tmp_path, tiny_base):
    recipe = recipe_for(tmp_path, "medusa", responses="corpus", loss="ce")
    _, _, _, sequences = Trainer(recipe, base=tiny_base).prepare_data()
    assert len(sequences) == 12 and not any("hidden_file" in entry for entry in sequences)
    assert (recipe.cache_path / "sequences-corpus.jsonl").is_file()
    assert not list(recipe.cache_path.glob("*.hidden.f16"))  # nothing generated, nothing stored


def test_self_distilled_sequences_keep_the_hidden_states_generation_computed(tmp_path, tiny_base):
    import numpy as np
    import torch

    from hydra_export.training.dataset import HiddenStateCache, build_sequences, read_records

    files = [str(DATA / "alpaca_5000.json"), str(DATA / "sharegpt_train_prompts.jsonl")]
    mixed = read_records(files, 4)
    assert "input" in mixed[0] and set(mixed[1]) == {"instruction"}  # one record from each file in turn
    recipe = recipe_for(tmp_path, "hydra++", data=files, num_examples=7, generation_batch_size=3)
    sequences = build_sequences(tiny_base, recipe, recipe.cache_path)
    cache = HiddenStateCache.build(tiny_base, sequences, recipe.cache_path)
    for i, sequence in enumerate(sequences):
        ids = sequence["prompt_ids"] + sequence["response_ids"]
        with torch.no_grad():
            full = tiny_base.decoder(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
        rows = np.asarray(cache.hidden[cache.offsets[i] : cache.offsets[i + 1]], dtype=np.float32)
        np.testing.assert_allclose(rows[:-1], full[:-1], atol=2e-2)  # fp16 storage of left-padded batches
        assert not rows[-1].any()  # the last token is never fed back: no state, no head trains on it

    # An interrupted run left entries for 4 records and half a batch of rows: the rerun drops the
    # stray rows and generates the rest, rows still in step with the entries.
    stem = recipe.cache_path / "sequences-self-distill"
    lines = Path(f"{stem}.jsonl").read_text().splitlines()
    Path(f"{stem}.jsonl").write_text("\n".join(lines[:4]) + "\n")
    with open(f"{stem}.hidden.f16", "ab") as stored:
        stored.write(b"\x01" * 1000)
    (recipe.cache_path / "hidden_meta.npz").unlink()
    again = build_sequences(tiny_base, recipe, recipe.cache_path)
    assert [s["response_ids"] for s in again] == [s["response_ids"] for s in sequences]
    rebuilt = HiddenStateCache.build(tiny_base, again, recipe.cache_path)
    np.testing.assert_allclose(np.asarray(rebuilt.hidden, np.float32), np.asarray(cache.hidden, np.float32), atol=1e-2)


def test_training_can_start_from_trained_heads(tmp_path, tiny_base):
    import torch

    first = recipe_for(tmp_path, "hydra", epochs=1)
    Trainer(first, base=tiny_base).train()
    trained = load_heads(first.output_dir, tiny_base.config).state_dict()
    warm = Trainer(recipe_for(tmp_path / "warm", "hydra", init_heads=first.output_dir), base=tiny_base)
    start = warm.heads.state_dict()
    assert all(torch.equal(start[name], value.to(start[name].dtype)) for name, value in trained.items()
               if name != "draft_vocab")
    with pytest.raises(HydraExportError, match="init_heads .* does not match the recipe's heads"):
        Trainer(recipe_for(tmp_path / "other", "medusa", init_heads=first.output_dir), base=tiny_base)


def test_a_later_stages_data_is_made_before_its_init_heads_exist(tmp_path, tiny_base):
    stage_two = recipe_for(tmp_path, "hydra", init_heads=str(tmp_path / "stage-one-not-trained-yet"))
    with pytest.raises(HydraExportError, match="not found"):
        Trainer(stage_two, base=tiny_base)  # training needs them
    cache = Trainer(stage_two, base=tiny_base, data_only=True).prepare_data()[0]  # the data does not
    assert len(cache) > 0 and not Path(stage_two.output_dir).exists()


def test_a_later_stage_trains_only_on_the_answers_after_first_example(tmp_path, tiny_base):
    whole = Trainer(recipe_for(tmp_path, "hydra"), base=tiny_base).prepare_data()
    later = Trainer(recipe_for(tmp_path, "hydra", first_example=7), base=tiny_base).prepare_data()
    # The same split (the same cache, the same order); held-out answers before first_example are not
    # scored, since an earlier stage may have trained on them.
    assert later[2] == [i for i in whole[2] if i >= 7] and 0 < len(later[2]) < len(whole[2])
    assert later[1] == [i for i in whole[1] if i >= 7] and later[1]  # in the same order, the earlier ones dropped
    past_held_out = max(whole[2]) + 1
    assert any(i >= past_held_out for i in whole[1])  # so that only the scoring is left without answers
    with pytest.raises(HydraExportError, match=f"none of the {len(whole[2])} held-out answers is at or after "
                                               f"first_example = {past_held_out}.*raise held_out_fraction"):
        Trainer(recipe_for(tmp_path, "hydra", first_example=past_held_out), base=tiny_base).prepare_data()
    (only,) = Trainer(recipe_for(tmp_path, "hydra", held_out_fraction=0.95), base=tiny_base).prepare_data()[1]
    assert only < 11  # so that a first_example past it leaves only held-out answers
    later_only = recipe_for(tmp_path, "hydra", held_out_fraction=0.95, first_example=only + 1)
    with pytest.raises(HydraExportError, match=f"no sequences to train on: all {11 - only} from first_example = "
                                               f"{only + 1} on are held out"):
        Trainer(later_only, base=tiny_base).prepare_data()


def test_recipe_errors(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"kind": "hydra", "output_dir": "x", "lerning_rate": 1}))
    with pytest.raises(HydraExportError, match=r"unknown keys \['lerning_rate'\]"):
        TrainRecipe.from_file(path)
    with pytest.raises(HydraExportError, match="not found"):
        TrainRecipe.from_file(tmp_path / "missing.json")
    path.write_text(json.dumps({"kind": "hydra", "output_dir": "x", "data": []}))
    with pytest.raises(HydraExportError, match="'data' must be a file path or a non-empty list"):
        TrainRecipe.from_file(path)
    path.write_text(json.dumps({"kind": "hydra", "output_dir": "x", "num_examples": 10, "first_example": 10}))
    with pytest.raises(HydraExportError, match=r"'first_example' must be an integer in \[0, num_examples = 10\)"):
        TrainRecipe.from_file(path)


def test_schedule_warms_up_then_decays():
    factor = cosine_with_warmup(100, 0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5, abs=0.05) and factor(99) < 0.01


def test_train_tree_search_and_curves_commands(tmp_path, model_dirs):
    from typer.testing import CliRunner

    from hydra_export.cli import app

    recipe = recipe_for(tmp_path, "hydra", model=str(model_dirs["llama"]), epochs=3)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({k: v for k, v in recipe.__dict__.items()}))
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(path), "--data-only", "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert "data ready in" in result.output and not Path(recipe.output_dir).exists()
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    assert "heads written to" in result.output

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"turns": [text]}) + "\n" for text in ("hello there", "the cat sat", "a b c")))
    search = ["tree-search", "--prompts", str(prompts), "--model", str(model_dirs["llama"]), "--heads",
              recipe.output_dir, "--limit", "3", "--max-new-tokens", "24", "--nodes", "4,8", "--copy", "0,2,4"]
    result = runner.invoke(app, [*search, "-o", str(tmp_path / "tree.json")], env={"HYDRA_EXPORT_CACHE": str(tmp_path)})
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["prompts"] == 3 and [tree["nodes"] for tree in plan["trees"]] == [4, 8]
    eight = plan["trees"][1]
    assert [c["copy_nodes"] for c in eight["candidates"]] == [0, 2, 4]
    assert eight["best"]["simulated_accepted_length"] == max(c["simulated_accepted_length"] for c in eight["candidates"])
    assert all(c["simulated_accepted_length"] >= 1.0 for c in eight["candidates"])
    written = json.loads((tmp_path / "tree-8.json").read_text())
    assert written == {"choices": eight["best"]["choices"], "copy_nodes": eight["best"]["copy_nodes"]}
    assert len(written["choices"]) + 1 + written["copy_nodes"] == 8
    assert list((tmp_path / "answers").glob("answers-*.jsonl"))  # the answers are cached for the next search

    result = runner.invoke(app, ["training-curves", recipe.output_dir, "--plot", str(tmp_path / "curves.png")])
    assert result.exit_code == 0, result.output
    (label, curve), = json.loads(result.stdout).items()
    assert label.startswith("hydra, ") and label.endswith(" answers")  # kind and training answers: one line per run
    assert curve["tokens"][0] == 0
    assert len(curve["simulated_mc_sim_7b_63"]) == len(curve["simulated_mc_sim_7b_63+copy8"]) == len(curve["tokens"])
    assert (tmp_path / "curves.png").stat().st_size > 10_000

    result = runner.invoke(app, [*search, "--nodes", "x"])
    assert result.exit_code == 1 and "comma-separated integers" in result.output

    costs = tmp_path / "step_costs.json"  # hydra-export step-costs' output, trimmed
    costs.write_text(json.dumps({"step_costs": [1.0, 1.1, 1.2, 1.3, 1.4, 2.5, 2.6, 2.7], "row_cost": 0.1}))
    result = runner.invoke(app, [*search, "--step-costs", str(costs)], env={"HYDRA_EXPORT_CACHE": str(tmp_path)})
    assert result.exit_code == 0, result.output
    priced = json.loads(result.stdout)
    assert priced["step_costs"] == {"measured": [1.0, 1.1, 1.2, 1.3, 1.4, 2.5, 2.6, 2.7], "row_cost": 0.1}
    best = priced["trees"][1]["best"]
    assert best["modelled_speedup"] == max(c["modelled_speedup"] for c in priced["trees"][1]["candidates"])
    result = runner.invoke(app, [*search, "--step-costs", str(costs), "--row-cost", "0.05"])
    assert result.exit_code == 1 and "not both" in result.output
    costs.write_text('{"milliseconds_per_call": {}}')
    result = runner.invoke(app, [*search, "--step-costs", str(costs)])
    assert result.exit_code == 1 and "hydra-export step-costs" in result.output and "Traceback" not in result.output


def test_long_prompts_lose_their_beginning_not_the_template(model_dirs):
    from hydra_export.base_model import load_base_model
    from hydra_export.training.dataset import encode_prompt

    base = load_base_model(model_dirs["llama"])
    one, other = encode_prompt(base, {"instruction": "cat"}), encode_prompt(base, {"instruction": "dog"})
    prefix = next(i for i, (a, b) in enumerate(zip(one, other)) if a != b)  # template before the request
    suffix = next(i for i, (a, b) in enumerate(zip(one[::-1], other[::-1])) if a != b)  # ... and after it
    words = " ".join(["the", "cat", "sat", "on", "a", "mat"] * 40) + " END"
    full = encode_prompt(base, {"instruction": words})
    cut = encode_prompt(base, {"instruction": words}, max_tokens=40)
    assert len(full) > 40 >= len(cut) > prefix + suffix
    assert cut[:prefix] == one[:prefix] and cut[-suffix:] == one[-suffix:]  # the template survives whole
    assert cut[-suffix - 1] == full[-suffix - 1]  # the request keeps its end ("END")


def test_every_shipped_recipe_is_valid():
    recipes = sorted((DATA.parent / "recipes").glob("*.json"))
    assert len(recipes) >= 4
    for path in recipes:
        recipe = TrainRecipe.from_file(path)
        assert all((DATA.parent / name).is_file() for name in recipe.data_files), path
