"""A character-level tokenizer over the tiny models' 128-token vocabulary, with a chat template."""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    characters = [c for c in string.printable if c not in "\x0b\x0c"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for character in characters:
        vocab.setdefault(character, len(vocab))
    for i in range(len(vocab), 128):
        vocab[f"<extra_{i}>"] = i
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
