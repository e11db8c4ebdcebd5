"""Tokenizer + chat template without transformers: the `tokenizers` library and jinja2."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from .errors import ArtifactError, GenerationInputError


TEMPLATE_SECONDS = 2.0  # a chat template's render budget: templates come with (untrusted) artifacts
TEMPLATE_CHARACTERS = 1 << 20  # and the most text one render may produce
TEMPLATE_RANGE = 10_000  # the longest range() a template may ask for


def _raise(message: str):
    raise TemplateError(message)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, plus a time budget checked on every call, attribute and item
    access (a template's loops do one of those per iteration), a bounded range(), and a cap on
    the text produced: a hostile template cannot hang or exhaust the runtime."""

    def __init__(self, **options):
        super().__init__(**options)
        self._deadline = threading.local()
        self.globals["range"] = self._range

    def _tick(self) -> None:
        if time.monotonic() > getattr(self._deadline, "value", float("inf")):
            raise TemplateError(f"the chat template ran for more than {TEMPLATE_SECONDS:g} s; "
                                "the artifact's template is broken or hostile")

    def _range(self, *args):
        self._tick()
        numbers = range(*args)
        if len(numbers) > TEMPLATE_RANGE:
            raise TemplateError(f"the chat template asked for a range of {len(numbers)} numbers")
        return numbers

    def call(self, __context, __obj, *args, **kwargs):
        self._tick()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj, attribute):
        self._tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        self._tick()
        return super().getitem(obj, argument)

    def render(self, template, **variables) -> str:
        self._deadline.value = time.monotonic() + TEMPLATE_SECONDS
        try:
            pieces, size = [], 0
            for piece in template.generate(**variables):
                self._tick()
                size += len(piece)
                if size > TEMPLATE_CHARACTERS:
                    raise TemplateError(f"the chat template produced more than {TEMPLATE_CHARACTERS} characters")
                pieces.append(piece)
            return "".join(pieces)
        finally:
            self._deadline.value = float("inf")


class ChatTokenizer:
    def __init__(self, tokenizer: Tokenizer, chat_template: str | None, special_tokens: dict[str, str]):
        self.tokenizer = tokenizer
        self.special_tokens = special_tokens  # e.g. {"bos_token": "<s>", "eos_token": "</s>"}
        self.template = None
        if chat_template:
            self.environment = environment = BoundedSandbox(trim_blocks=True, lstrip_blocks=True,
                                                            extensions=[loopcontrols])
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
        try:
            config = json.loads(config_file.read_bytes().decode("utf-8")) if config_file.is_file() else {}
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except (ValueError, UnicodeDecodeError, Exception) as error:  # tokenizers raises plain Exception
            raise ArtifactError(f"the tokenizer files in {directory} cannot be read ({error}); rebuild the "
                                "artifact") from None
        template = config.get("chat_template")
        template_file = directory / "chat_template.jinja"
        if template is None and template_file.is_file():
            template = template_file.read_text()
        special = {key: _token_text(config.get(key)) for key in ("bos_token", "eos_token") if config.get(key)}
        try:
            return cls(tokenizer, template, special)
        except TemplateError as error:
            raise ArtifactError(f"the chat template in {directory} does not compile ({error}); rebuild the "
                                "artifact") from None

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
            text = self.environment.render(self.template, messages=messages, add_generation_prompt=True,
                                           **self.special_tokens)
        except TemplateError as error:
            raise GenerationInputError(f"the chat template rejected the messages: {error}") from None
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _token_text(value) -> str:
    return value["content"] if isinstance(value, dict) else str(value)
