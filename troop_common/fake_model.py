"""The fake model: the answer rule of the worker's fake engine and the log-probability it
gives each word, in one place, so a trusted scorer can check a fake worker's evidence.

The fake engine answers "You said: <the last user message>" one word per token, each
word with its leading space; `echo_logprob` is the (made-up, deterministic)
log-probability of the word at a position of that answer.
"""

from __future__ import annotations

from collections.abc import Sequence


def echo_words(messages: Sequence[tuple[str, str]]) -> list[str]:
    """The words the fake model answers to (role, content) messages, each after the first
    with its leading space: "You said: <the last user message>", or "Hello!"."""
    last = next((content for role, content in reversed(messages) if role == "user"), "")
    words = ["You", "said:", *last.split()] if last.split() else ["Hello!"]
    return [words[0], *(" " + w for w in words[1:])]


def echo_logprob(position: int, word: str) -> float:
    """The fake model's log-probability of `word` at `position` (0-based) of its answer:
    deterministic, in [-1.3, -0.1]."""
    return -0.1 * (1 + (position * 7 + len(word)) % 13)
