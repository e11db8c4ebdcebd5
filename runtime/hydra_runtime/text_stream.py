"""Incremental detokenization: emit only text that will not change when more tokens arrive."""

from __future__ import annotations


class TextStream:
    def __init__(self, decode):
        self.decode = decode  # list[int] -> str
        self.ids: list[int] = []
        self.sent = 0  # characters already emitted

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):  # an unfinished multi-byte character: wait for the rest
            return ""
        fresh, self.sent = text[self.sent :], len(text)
        return fresh

    def flush(self) -> str:
        """Whatever is left once no more tokens will come (an unfinished character included)."""
        text = self.decode(self.ids)
        fresh, self.sent = text[self.sent :], len(text)
        return fresh
