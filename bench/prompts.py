"""The prompt set every engine benchmark uses, so their figures compare.

Greedy (temperature 0), at most `MAX_TOKENS` completion tokens, one user message each.
The first is the question `bench.inference_path` asks; the others vary in kind (facts,
a list, code, a rewrite, arithmetic, a story, a definition) and so in length of answer.
Eight of them: the concurrent runs start one stream per prompt.
"""

from __future__ import annotations

MAX_TOKENS = 64
TEMPERATURE = 0.0

PROMPTS: tuple[str, ...] = (
    "Explain in a few sentences why the sky is blue.",
    "What is the capital of France, and what is it known for?",
    "List three tips for writing clear emails.",
    "Write a Python function that returns the square of a number.",
    "Rewrite this sentence to sound more formal: hey, can u send me the file?",
    "If I have 12 apples and give away 5, how many do I have left? Explain.",
    "Tell me a very short story about a cat who learns to fly.",
    "What does a compiler do?",
)

__all__ = ["MAX_TOKENS", "PROMPTS", "TEMPERATURE"]
