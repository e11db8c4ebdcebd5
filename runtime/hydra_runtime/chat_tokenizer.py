"""Tokenizer + chat template without transformers: the `tokenizers` library and jinja2."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from .errors import ArtifactError, GenerationInputError


def _raise(message: str):
    raise TemplateError(message)


class ChatTokenizer:
    def __init__(self, tokenizer: Tokenizer, chat_template: str | None, special_tokens: dict[str, str]):
        self.tokenizer = tokenizer
        self.special_tokens = special_tokens  # e.g. {"bos_token": "<s>", "eos_token": "</s>"}
        self.template = None
        if chat_template:
            environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            environment.globals["raise_exception"] = _raise
            environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self.template = environment.from_string(chat_template)

    @classmethod
    def from_dir(cls, directory: Path) -> ChatTokenizer:
        directory = Path(directory)
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ArtifactError(f"{tokenizer_file} is missing; rebuild the artifact")
        config_file = directory / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        template = config.get("chat_template")
        template_file = directory / "chat_template.jinja"
        if template is None and template_file.is_file():
            template = template_file.read_text()
        special = {key: _token_text(config.get(key)) for key in ("bos_token", "eos_token") if config.get(key)}
        return cls(Tokenizer.from_file(str(tokenizer_file)), template, special)

    def encode_prompt(self, prompt_or_messages) -> list[int]:
        """A string becomes one user message when there is a chat template; a list of
        {"role", "content"} messages is rendered with the template (generation prompt added)."""
        if isinstance(prompt_or_messages, str) and self.template is None:
            return self.tokenizer.encode(prompt_or_messages).ids
        messages = (
            [{"role": "user", "content": prompt_or_messages}]
            if isinstance(prompt_or_messages, str)
            else list(prompt_or_messages)
        )
        if self.template is None:
            raise GenerationInputError("this artifact's tokenizer has no chat template; pass a plain string prompt")
        for message in messages:
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise GenerationInputError(f"each message needs 'role' and 'content'; got {message!r}")
        try:
            text = self.template.render(messages=messages, add_generation_prompt=True, **self.special_tokens)
        except TemplateError as error:
            raise GenerationInputError(f"the chat template rejected the messages: {error}") from None
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _token_text(value) -> str:
    return value["content"] if isinstance(value, dict) else str(value)
