"""The CLI through Typer's runner: outputs, and errors printed as one line without a traceback."""

import json

import pytest

from conftest import DATA, invoke



def test_build_then_inspect_generate_verify_bench(tmp_path, model_dirs, artifacts, monkeypatch):
    heads_dir = artifacts("llama", "hydra").parent / "heads"
    out = tmp_path / "art"
    result = invoke("build", "-m", model_dirs["llama"], "--heads", heads_dir, "--tree", "tree8",
                    "--max-seq-len", 128, "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind

    result = invoke("inspect", out)
    assert result.exit_code == 0 and "tree tree8: 8 drafted nodes, depth 3, copy chain of 4" in result.output
    assert "past_key_values.0.key" in result.output and "next_tree_tokens" in result.output

    result = invoke("generate", out, "Hello", "-n", 6, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["token_ids"]) == 6

    result = invoke("verify", out, "-m", model_dirs["llama"])
    assert result.exit_code == 0, result.output
    assert "identical to the PyTorch reference: yes" in result.output

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"question_id": i, "turns": [f"Q{i}?", "More?"]}) for i in range(3)))
    report_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    result = invoke("bench", out, "--prompts", prompts, "--limit", 2, "-n", 8, "--turns", 2,
                    "--json", report_path, "--plot", plot_path)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["summary"]["samples"] == 4 and report["summary"]["lossless"] is True
    assert {"hydra", "autoregressive", "hydra_over_autoregressive"} <= set(report["summary"])
    assert plot_path.stat().st_size > 10_000

    result = invoke("bench", out, "--prompts", prompts, "--limit", 1, "-n", 8, "--modes", "hydra")
    assert result.exit_code == 0, result.output
    assert "autoregressive" not in json.loads(result.stdout) and "lossless" not in json.loads(result.stdout)
    result = invoke("bench", out, "--prompts", prompts, "--modes", "fast")
    assert result.exit_code == 1 and "--modes must be" in result.output
    sampled = [json.loads(invoke("bench", out, "--prompts", prompts, "--limit", 2, "-n", 8, "--temperature", 0.9,
                                 "--json", report_path, "--plot", plot_path).stdout) for _ in range(2)]
    assert sampled[0]["config"]["temperature"] == 0.9 and "lossless" not in sampled[0]  # sampled: no identity check
    assert {"hydra", "autoregressive"} <= set(sampled[0])
    for key in ("new_tokens", "mean_accepted_length"):  # seeded per prompt: the same run twice
        assert sampled[0]["hydra"][key] == sampled[1]["hydra"][key]
    result = invoke("bench", out, "--prompts", prompts, "--temperature", 0.5, "--transformers-baseline")
    assert result.exit_code == 1 and "use it with --temperature 0" in result.output

    monkeypatch.setenv("HYDRA_EXPORT_CACHE", str(tmp_path / "cache"))  # the greedy answers are cached there
    result = invoke("simulate", out, "--prompts", prompts, "--limit", 2, "--max-new-tokens", 12)
    assert result.exit_code == 0, result.output
    simulated = json.loads(result.stdout)
    assert simulated["steps"] >= 2 and 1.0 <= simulated["simulated_accepted_length"] <= 1 + 4  # a 3-deep tree, 4 copies
    assert list((tmp_path / "cache" / "answers").glob("answers-*.jsonl"))
    assert "modelled_speedup" not in simulated
    costs = tmp_path / "step_costs.json"
    costs.write_text(json.dumps({"step_costs": [1.0], "row_cost": 0.0}))  # rows free: speedup = accepted length
    result = invoke("simulate", out, "--prompts", prompts, "--limit", 2, "--max-new-tokens", 12, "--step-costs", costs)
    assert result.exit_code == 0, result.output
    priced = json.loads(result.stdout)
    assert priced["modelled_speedup"] == pytest.approx(priced["simulated_accepted_length"], abs=1e-3)

    result = invoke("build", "-m", model_dirs["llama"], "--heads", heads_dir, "-o", out)
    assert result.exit_code == 1 and "already exists; pass --force" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tree", "tree1000"], "unknown tree preset 'tree1000'"),
        (["--copy-nodes", "1"], "copy_nodes must be 0 (no copy chain) or 2..32"),
        (["--dtype", "fp8"], "'fp8' is not one of 'fp32', 'fp16', 'bf16'"),
        (["--max-seq-len", "100000"], "--max-seq-len 100000 is outside"),
        (["--heads", "/nonexistent/heads"], "does not exist; train heads"),
    ],
)
def test_build_errors_are_one_clear_line(tmp_path, model_dirs, artifacts, args, message):
    heads_dir = artifacts("llama", "hydra").parent / "heads"
    base_args = ["build", "-m", model_dirs["llama"], "--heads", heads_dir, "-o", tmp_path / "art"]
    result = invoke(*base_args, *args)
    assert result.exit_code in (1, 2)  # 2: a usage error caught by the option's choices
    assert message in " ".join(result.output.replace("│", " ").split())
    assert not (tmp_path / "art").exists()


def test_build_without_heads_for_a_custom_model(tmp_path, model_dirs):
    result = invoke("build", "-m", model_dirs["llama"], "-o", tmp_path / "art")
    assert result.exit_code == 1 and "no heads given and none are shipped" in result.output


def test_generate_on_a_broken_artifact(tmp_path):
    result = invoke("generate", tmp_path, "hi")
    assert result.exit_code == 1 and "manifest.json is missing" in result.output


def test_bench_rejects_bad_prompt_file(tmp_path, artifacts):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("{not json\n")
    result = invoke("bench", artifacts("llama", "hydra"), "--prompts", prompts)
    assert result.exit_code == 1 and "p.jsonl:1 is not JSON" in result.output


def test_bench_reads_mt_bench():
    from hydra_export.benchmark import read_prompts

    conversations = read_prompts(DATA / "mt_bench.jsonl", limit=3, turns=2)
    assert len(conversations) == 3 and all(len(c.turns) == 2 for c in conversations)
