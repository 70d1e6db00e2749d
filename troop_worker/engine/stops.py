"""Incremental emission of generated text: stop sequences and half-decoded characters.

Engines feed the whole text generated so far; `StopScanner` returns only the
part that is safe to send: never the stop sequence itself, never a tail that
could still become one, never a trailing U+FFFD (a multi-byte character whose
remaining bytes are still to come).
"""

from __future__ import annotations

from collections.abc import Sequence

REPLACEMENT = "\ufffd"


class StopScanner:
    """Tracks what of a growing text has been emitted."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.emitted = 0
        self.stopped = False

    def feed(self, text: str, *, final: bool = False) -> str:
        """The new safe part of `text` (everything generated so far).

        Sets `stopped` once a stop sequence appears; the text from it on is
        never returned. With `final`, everything left (short of a stop) is
        returned.
        """
        if self.stopped:
            return ""
        start = self.emitted
        cut = min((i for s in self.stops if (i := text.find(s, start)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._take(text, cut)
        if final:
            return self._take(text, len(text))
        end = len(text)
        while end > start and text[end - 1] == REPLACEMENT:
            end -= 1
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, end - start), hold, -1):
                if text.endswith(stop[:k], start, end):
                    hold = k
                    break
        return self._take(text, end - hold)

    def _take(self, text: str, end: int) -> str:
        piece = text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece
