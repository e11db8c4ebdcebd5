"""`hydra-export bench`: Hydra vs autoregressive decoding on the same engines, interleaved.

Optionally also transformers `generate` on the same prompts (the baseline users know).
Every number comes from this run; nothing is carried over from elsewhere.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hydra_runtime.generator import Generator

from .errors import HydraExportError


@dataclass(frozen=True)
class Conversation:
    question_id: str
    turns: tuple[str, ...]


def read_prompts(path: Path, limit: int | None = None, turns: int = 1) -> list[Conversation]:
    """MT-Bench jsonl ({"question_id", "turns": [...]}), or jsonl with a "prompt" field."""
    path = Path(path)
    if turns not in (1, 2):
        raise HydraExportError(f"--turns must be 1 or 2, got {turns}")
    conversations = []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise HydraExportError(f"cannot read prompts from {path}: {error}; expected UTF-8 jsonl") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise HydraExportError(f"{path}:{number} is not JSON ({error}); expected one JSON object per line") from None
        if not isinstance(record, dict):
            raise HydraExportError(f"{path}:{number} is not a JSON object; expected {{\"turns\": [...]}} per line")
        texts = record.get("turns") or ([record["prompt"]] if "prompt" in record else None)
        if isinstance(texts, str) or not isinstance(texts, list) or not texts or not all(
                isinstance(text, str) and text for text in texts):
            raise HydraExportError(f"{path}:{number} needs 'turns' (a list of non-empty strings) or 'prompt' "
                                   f"(a non-empty string), got {texts!r:.80}")
        conversations.append(Conversation(str(record.get("question_id", number)), tuple(texts[:turns])))
        if limit is not None and len(conversations) >= limit:
            break
    if not conversations:
        raise HydraExportError(f"{path} holds no prompts")
    return conversations


@dataclass
class ModeTotals:
    new_tokens: int = 0
    seconds: float = 0.0
    steps: int = 0
    accepted: list[int] = field(default_factory=list)

    def add(self, new_tokens: int, seconds: float, steps: int = 0, accepted: list[int] | None = None) -> None:
        self.new_tokens += new_tokens
        self.seconds += seconds
        self.steps += steps
        self.accepted += accepted or []

    def summary(self) -> dict:
        return {
            "new_tokens": self.new_tokens,
            "seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.new_tokens / self.seconds, 3) if self.seconds else 0.0,
            **({"mean_accepted_length": round(float(np.mean(self.accepted)), 4)} if self.accepted else {}),
        }


class TransformersBaseline:
    """transformers `generate` (greedy) on the artifact's base model, for reference speed."""

    def __init__(self, model_source: str):
        import torch

        from .base_model import load_base_model

        self.torch = torch
        self.base = load_base_model(model_source)

    def generate(self, prompt_ids: list[int], max_new_tokens: int, eos: list[int]) -> tuple[list[int], float]:
        torch = self.torch
        with torch.no_grad():
            start = time.perf_counter()
            out = self.base.model.generate(
                torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=eos or None, pad_token_id=eos[0] if eos else 0,
            )
            seconds = time.perf_counter() - start
        return out[0, len(prompt_ids):].tolist(), seconds


def run_benchmark(
    generator: Generator,
    conversations: list[Conversation],
    max_new_tokens: int,
    transformers: TransformersBaseline | None = None,
    advance=lambda rates: None,
    modes: tuple[str, ...] = ("hydra", "autoregressive"),
    temperature: float = 0.0,
) -> dict:
    """Per prompt, each of ``modes`` on the same engine (alternating which goes first).
    ``advance(rates)`` is called after each prompt with the tokens/s of each mode so far.
    ``temperature`` > 0: sampled, prompt i seeded with i in every mode (outputs then differ
    between modes by design: no identity check)."""
    totals = {mode: ModeTotals() for mode in modes}
    if transformers is not None:
        totals["transformers"] = ModeTotals()
    samples = []
    eos = generator.manifest.eos_token_ids
    warm_up_ids = generator.encode(conversations[0].turns[0])
    for mode in modes:  # touch the engine's buffers and code paths before anything is timed
        generator.generate_ids(warm_up_ids, 8, mode=mode)
    for index, conversation in enumerate(conversations):
        messages: list[dict] = []
        for turn, text in enumerate(conversation.turns, start=1):
            messages.append({"role": "user", "content": text})
            prompt_ids = generator.encode(messages)
            # Alternate which mode runs first so neither always gets the warmer caches.
            order = list(modes) if index % 2 == 0 else list(reversed(modes))
            results = {}
            for mode in order:
                ids, stats = generator.generate_ids(prompt_ids, max_new_tokens, mode=mode, temperature=temperature,
                                                    seed=index)
                seconds = stats.prefill_seconds + stats.decode_seconds
                totals[mode].add(len(ids), seconds, stats.steps, stats.accepted_lengths)
                results[mode] = (ids, stats)
            sample = {
                "question_id": conversation.question_id,
                "turn": turn,
                "prompt_tokens": len(prompt_ids),
            }
            if len(results) == 2 and temperature == 0:
                sample["identical"] = results["hydra"][0] == results["autoregressive"][0]
            for mode, (ids, stats) in results.items():
                sample[mode] = stats.as_dict()
            if transformers is not None:
                ids, seconds = transformers.generate(prompt_ids, max_new_tokens, eos)
                totals["transformers"].add(len(ids), seconds)
                sample["transformers"] = {"new_tokens": len(ids), "seconds": round(seconds, 4),
                                          "tokens_per_second": round(len(ids) / seconds, 3)}
                sample["identical_to_transformers"] = ids == results[modes[-1]][0]
            samples.append(sample)
            messages.append({"role": "assistant", "content": generator.tokenizer.decode(results[modes[0]][0])})
        advance({mode: t.summary()["tokens_per_second"] for mode, t in totals.items()})
    summary = {mode: t.summary() for mode, t in totals.items()}
    rate = {mode: values["tokens_per_second"] for mode, values in summary.items()}
    for faster, slower in (("hydra", "autoregressive"), ("autoregressive", "transformers"), ("hydra", "transformers")):
        if faster in rate and rate.get(slower):
            summary[f"{faster}_over_{slower}"] = round(rate[faster] / rate[slower], 3)
    if len(modes) == 2 and temperature == 0:
        summary["lossless"] = all(sample["identical"] for sample in samples)
    summary["samples"] = len(samples)
    return {"summary": summary, "samples": samples}


def plot_benchmark(report: dict, out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    modes = [m for m in ("transformers", "autoregressive", "hydra") if m in samples[0]]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(samples))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        left.bar(x + i * width, [s[mode]["tokens_per_second"] for s in samples], width, label=mode)
    left.set_xlabel("prompt")
    left.set_ylabel("tokens / s")
    left.set_title("Decoding speed per prompt")
    left.legend()
    accepted = [s["hydra"]["mean_accepted_length"] for s in samples if "hydra" in s]
    right.hist(accepted, bins=20, color="tab:green")
    right.set_xlabel("mean accepted length (tokens per step)")
    right.set_ylabel("prompts")
    summary = report["summary"]
    temperature = report.get("config", {}).get("temperature", 0)
    title = f"Hydra: {summary['hydra'].get('mean_accepted_length', 0):.2f} tokens/step"
    title += f" (sampled, T = {temperature:g})" if temperature else " (greedy)"
    if "hydra_over_autoregressive" in summary:
        title += f", {summary['hydra_over_autoregressive']:.2f}x over autoregressive"
    right.set_title(title)
    figure.tight_layout()
    figure.savefig(out_path, dpi=110)
    plt.close(figure)
