"""Build a random-weight model of a real shape and report the build's time and memory as JSON.

    python3 scripts/scale_build.py tinyllama-1.1b --dtype fp16 -o /tmp/scale      # one shape
    python3 scripts/scale_build.py llama-2-7b --dtype fp16 -o /tmp/scale --keep   # keep the artifact
    python3 scripts/scale_build.py tinyllama-1.1b -o /tmp/scale --save-hf /tmp/tl   # model + heads for the CLI, other tools

Nothing is downloaded: the model is made from its config with random weights (created on
the meta device, then materialised once in the target dtype), with random Hydra++ heads.
Peak RSS is the whole process's (the model's weights included), so ``peak_over_weights``
is what a user building that model would see. Not part of the test suite (too big).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

SHAPES = {  # the configs of public checkpoints (dimensions only)
    "tinyllama-1.1b": dict(model_type="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                           max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=False),
    "llama-2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                       max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=False),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True,
                         rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0, original_max_position_embeddings=8192)),
    "qwen2-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                     max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=False),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def random_model(shape: str, dtype: torch.dtype):
    """A model of ``shape`` with random weights, allocated once, directly in ``dtype``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(SHAPES[shape])
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = model.to_empty(device="cpu")
    if config.tie_word_embeddings:
        model.tie_weights()  # to_empty gave the LM head its own storage; a tied model shares the embedding's
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(-0.02, 0.02, generator=generator)
        for module in model.modules():  # buffers (rotary inv_freq) are computed, not random
            if hasattr(module, "rope_init_fn"):
                inv_freq, _ = module.rope_init_fn(module.config, "cpu")
                module.inv_freq = inv_freq
                module.original_inv_freq = inv_freq
    return model.eval()


def word_tokenizer():
    """A tokenizer file for the artifact (the benchmark decodes nothing)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                   unk_token="<unk>", eos_token="<unk>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--tree", default="mc_sim_7b_63")
    parser.add_argument("--max-seq-len", type=int, default=2048)
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the artifact")
    parser.add_argument("--keep", action="store_true", help="keep the artifact (default: delete it after)")
    parser.add_argument("--save-hf", type=Path, help="also save the random model as a Hugging Face directory "
                                                     "(for other builders, e.g. onnxruntime-genai's), then exit")
    args = parser.parse_args()

    from hydra_export.artifact_builder import BuildOptions, build_artifact
    from hydra_export.base_model import wrap_model
    from hydra_export.heads import build_heads, heads_config_for
    from hydra_runtime import TreeBuffers

    torch.manual_seed(0)
    started = time.perf_counter()
    dtype = DTYPES[args.dtype]
    model = random_model(args.shape, dtype)
    heads = build_heads(heads_config_for("hydra++", model.config), model.config).to(dtype)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    head_bytes = sum(p.numel() * p.element_size() for p in heads.parameters())
    made = time.perf_counter()
    rss_after_model = peak_rss_bytes()
    if args.save_hf:
        from hydra_export.heads.checkpoint import save_heads

        model.save_pretrained(args.save_hf)
        word_tokenizer().save_pretrained(args.save_hf)
        save_heads(heads, args.save_hf / "hydra++-heads")  # for `hydra-export build --model DIR --heads DIR/hydra++-heads`
        print(json.dumps({"saved": str(args.save_hf), "weight_bytes": weight_bytes, "head_bytes": head_bytes}))
        return
    out = args.output / f"{args.shape}-{args.dtype}"
    build_artifact(wrap_model(model, word_tokenizer(), name=args.shape), heads, TreeBuffers.from_name(args.tree),
                   out, BuildOptions(tree_name=args.tree, dtype=args.dtype, max_seq_len=args.max_seq_len,
                                     force=True))
    built = time.perf_counter()
    artifact_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    peak = peak_rss_bytes()
    report = {
        "shape": args.shape, "dtype": args.dtype, "tree": args.tree, "max_seq_len": args.max_seq_len,
        "make_model_seconds": round(made - started, 1), "build_seconds": round(built - made, 1),
        "weight_bytes": weight_bytes, "head_bytes": head_bytes, "artifact_bytes": artifact_bytes,
        "peak_rss_after_model_bytes": rss_after_model, "peak_rss_bytes": peak,
        "peak_over_weights": round(peak / (weight_bytes + head_bytes), 3),
        "artifact_over_weights": round(artifact_bytes / (weight_bytes + head_bytes), 3),
        "python": sys.version.split()[0], "torch": torch.__version__,
    }
    if not args.keep:
        shutil.rmtree(out)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
