"""The prompt set every engine benchmark uses, so their figures compare.

Greedy (temperature 0), at most `MAX_TOKENS` completion tokens, one user message each.
The first is the question `bench.inference_path` asks; the others vary in kind (facts,
a list, code, a rewrite, arithmetic, a story, a definition) and so in length of answer.
Eight of them: the concurrent runs start one stream per prompt.
"""

from __future__ import annotations

from troop_verifier.jobs import PROMPTS as VERIFIER_PROMPTS

MAX_TOKENS = 64
TEMPERATURE = 0.0

# The first eight of the verifier's ordinary prompts (one list of them in the repository).
PROMPTS: tuple[str, ...] = VERIFIER_PROMPTS[:8]

__all__ = ["MAX_TOKENS", "PROMPTS", "TEMPERATURE"]
