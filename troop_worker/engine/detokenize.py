"""Incremental detokenization: each new token costs the decode of a short window.

Decoding the whole generation again for every token costs O(n) per token
(O(n²) per job). Byte-level BPE pieces only make sense in context (a leading
space, the bytes of one character split across tokens), so the decoder keeps
two offsets into the ids: `prefix` (where the window starts, at a token whose
text has been emitted in full) and `read` (the first token not yet emitted).
A step decodes the window `ids[prefix:]` and emits what it adds to the
already-emitted `ids[prefix:read]`, unless it ends in a half character
(U+FFFD), which waits for the next token. The concatenation of the pieces
equals decoding all ids at once (tested against the real tokenizer).
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"

Decode = Callable[[list[int]], str]


class IncrementalDetokenizer:
    """`push(token)` returns the text the token completes ("" while a character is half)."""

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        done = self._decode(self.ids[self._prefix : self._read])
        window = self._decode(self.ids[self._prefix :])
        if len(window) <= len(done) or window.endswith(REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return window[len(done) :]

    def flush(self) -> str:
        """Whatever is held back (a character that never completed) at the end of a job."""
        done = self._decode(self.ids[self._prefix : self._read])
        window = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return window[len(done) :]
