"""The decode simulator replays what the reference decoder does, step for step, from one
teacher-forced pass (tiny random models: they repeat themselves, so the copy chain matters)."""

import json

import numpy as np
import pytest
import torch

from conftest import random_heads
from test_reference_decoder import autoregressive, random_prompts

from hydra_export.decoding.reference_decoder import ReferenceDecoder
from hydra_export.errors import HydraExportError
from hydra_export.training.decode_traces import MAX_RANK, decode_traces
from hydra_runtime import TreeBuffers
from hydra_runtime.decode_simulator import DecodeTrace, simulate
from hydra_runtime.step_costs import StepCosts
from hydra_runtime.tree_search import rank_probs_from_traces, search_trees


@pytest.mark.parametrize("kind", ["medusa", "hydra", "hydra++"])
@pytest.mark.parametrize("tree_name, copy_nodes", [("tree16", 0), ("tree8", 6), ("mc_sim_7b_63", 4)])
def test_simulated_steps_are_the_reference_decoders(base, kind, tree_name, copy_nodes):
    torch.manual_seed(0)
    heads = random_heads(base, kind)
    tree = TreeBuffers.from_name(tree_name, copy_nodes=copy_nodes)
    prompts = random_prompts(3, seed=9)
    answers = [autoregressive(base, prompt, 48) for prompt in prompts]
    traces = decode_traces(base, heads, prompts, answers)
    decoder = ReferenceDecoder(base, heads, tree)
    simulated = iter(simulate(tree, [trace]).accepted_lengths for trace in traces)
    for prompt, answer in zip(prompts, answers):
        real = decoder.generate(prompt, len(answer))
        assert real.tokens == answer
        replayed = next(simulated)
        # The last real step may accept past the answer's end (then cut); every other step is the same.
        assert list(replayed[:-1]) == real.accepted_lengths[: len(replayed) - 1]
        assert sum(replayed) == len(answer) - 1  # the prefill's token, then every step's


def test_a_copy_only_trace_by_hand():
    # Prompt 1 2 3 1 2; answer 3 1 2 3 1 2 3: prompt lookup predicts it all, heads never.
    trace = DecodeTrace(np.array([1, 2, 3, 1, 2]), np.array([3, 1, 2, 3, 1, 2, 3]), np.full((7, 2), -1, np.int16))
    run = simulate(TreeBuffers.from_choices([[0], [0, 0]], copy_nodes=4), [trace])
    assert run.accepted_lengths == (5, 1) and run.copy_wins == 1  # 4 copied + the root's successor; then the end
    assert run.verified_rows == (7, 7)  # 3 drafted nodes + the whole chain: "1 2 3" agrees 3 tokens back
    # 6 tokens in 2 steps of 7 rows, a row costing 10% of a one-token step: 6 / (2 * 1.6).
    assert run.modelled_speedup(StepCosts.linear(0.1)) == pytest.approx(6 / 3.2)
    assert run.modelled_speedup(StepCosts()) == 3.0
    measured = StepCosts((1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 2.0), row_cost=0.5)  # 7 rows cost 2 one-token steps
    assert run.modelled_speedup(measured) == pytest.approx(6 / 4.0)
    heads_only = simulate(TreeBuffers.from_choices([[0], [0, 0]]), [trace])
    assert heads_only.accepted_lengths == (1,) * 6


def test_drafted_depth_follows_the_trees_choices():
    ranks = np.array([[0, 1], [1, 0], [0, 0], [-1, -1], [-1, -1], [-1, -1]], dtype=np.int16)
    trace = DecodeTrace(np.array([9]), np.array([10, 11, 12, 13, 14, 15]), ranks)
    # Step at t=0: ranks (0, 1): [0] yes, [0, 1] yes -> 3 tokens; then t=3: misses -> 1 token each.
    assert simulate(TreeBuffers.from_choices([[0], [0, 1]]), [trace]).accepted_lengths == (3, 1, 1)
    # [0, 1] is not in this tree: 2 tokens; at t=2 ranks (0, 0) -> 3 tokens, the answer's end.
    assert simulate(TreeBuffers.from_choices([[0], [0, 0]]), [trace]).accepted_lengths == (2, 3)


def test_search_splits_each_budget_between_heads_and_chain():
    trace = DecodeTrace(np.array([1, 2, 3, 1, 2]), np.array([3, 1, 2, 3, 1, 2, 3]), np.zeros((7, 2), np.int16))
    assert rank_probs_from_traces([trace], 4)[:, 0].tolist() == [1.0, 1.0]
    [result] = search_trees([trace], budgets=[6], copy_lengths=[0, 4], max_rank=MAX_RANK)
    assert [c["copy_nodes"] for c in result["candidates"]] == [0, 4]
    assert result["best"]["simulated_accepted_length"] == max(c["simulated_accepted_length"]
                                                             for c in result["candidates"])



def test_where_rows_cost_the_search_prefers_the_cheaper_split():
    # Heads always right, nothing to copy: 6 drafted nodes accept the most, but a chain that finds
    # no match sends no rows, so 2 drafted nodes + the (empty) chain verify far fewer.
    trace = DecodeTrace(np.array([1, 2, 3]), np.arange(4, 40), np.zeros((36, 2), np.int16))
    [free] = search_trees([trace], budgets=[6], copy_lengths=[0, 4], max_rank=MAX_RANK)
    [priced] = search_trees([trace], budgets=[6], copy_lengths=[0, 4], max_rank=MAX_RANK,
                            costs=StepCosts.linear(0.5))
    assert free["best"]["copy_nodes"] == 0 and priced["best"]["copy_nodes"] == 4
    assert [c["mean_verified_rows"] for c in priced["candidates"]] == [6, 2]


def test_a_measured_jump_in_step_cost_changes_the_best_split():
    # Heads always right, nothing to copy: 6 drafted nodes accept 6 tokens a step, 2 accept 2. Where
    # rows cost 5% each the 6-node split wins; where the 6th row crosses a measured jump to 4x a
    # one-token step (as CPU GEMM blocking makes) the 2-node split does.
    trace = DecodeTrace(np.array([1, 2, 3]), np.arange(4, 40), np.zeros((36, 5), np.int16))
    [linear] = search_trees([trace], budgets=[6], copy_lengths=[0, 4], max_rank=MAX_RANK,
                            costs=StepCosts.linear(0.05))
    jump = StepCosts((1.0, 1.05, 1.1, 1.15, 1.2, 4.0), row_cost=0.05)
    [measured] = search_trees([trace], budgets=[6], copy_lengths=[0, 4], max_rank=MAX_RANK, costs=jump)
    assert linear["best"]["copy_nodes"] == 0 and measured["best"]["copy_nodes"] == 4


def test_step_costs_past_the_measured_rows_grow_by_the_row_cost(tmp_path):
    costs = StepCosts((1.0, 1.2, 1.3), row_cost=0.1)
    assert [costs.of(rows) for rows in (1, 2, 3, 4, 6)] == pytest.approx([1.0, 1.2, 1.3, 1.4, 1.6])
    assert StepCosts().free and not costs.free and not StepCosts.linear(0.01).free
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"milliseconds_per_call": {"1+0": 20.0}, "step_costs": [1.0, 1.2, 1.3],
                                "row_cost": 0.1}))
    assert StepCosts.from_file(path) == costs


@pytest.mark.parametrize("text", ["not json", "{}", '{"step_costs": [], "row_cost": 0.1}',
                                  '{"step_costs": [1.0, 0.5], "row_cost": 0.1}',
                                  '{"step_costs": [1.0], "row_cost": -1}', '{"step_costs": "1.0", "row_cost": 0.1}'])
def test_step_costs_files_that_are_not_row_costs_output_are_refused(tmp_path, text):
    path = tmp_path / "costs.json"
    path.write_text(text)
    with pytest.raises(HydraExportError, match="hydra-export step-costs"):
        StepCosts.from_file(path)


def test_step_costs_commands_output_is_what_tree_search_reads(artifacts, tmp_path):
    from conftest import invoke

    from hydra_runtime.generator import Generator

    artifact = artifacts("llama", "hydra")
    path = tmp_path / "step_costs.json"
    result = invoke("step-costs", artifact, "--context", 8, "--calls", 1, "-o", path)
    assert result.exit_code == 0, result.output
    costs = StepCosts.from_file(path)
    assert json.loads(result.stdout)["step_costs"] == list(costs.measured)
    with Generator.load(artifact) as generator:
        assert len(costs.measured) == generator.tree.num_verified  # every row count, 1 .. N + C
        too_long = generator.manifest.max_seq_len
    result = invoke("step-costs", artifact, "--context", too_long)
    assert result.exit_code == 1 and "--context" in result.output and "must fit" in result.output
