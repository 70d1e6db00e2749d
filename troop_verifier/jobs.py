"""Verification jobs that look like users' jobs.

A job is a prompt drawn from a set of ordinary requests (the built-in set, or
the operator's own file, one prompt a line, with `--prompts`), with sampling
parameters drawn the way users set them: about half greedy, the rest sampled at
a usual temperature and top-p, and a spread of max_tokens. Nothing in the
request marks it as a check; the verifier's identities join and pay like any
user's (`runner`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from troop_common.errors import FieldViolation, InvalidArgument

PROMPTS: tuple[str, ...] = (
    "Explain in a few sentences why the sky is blue.",
    "What is the capital of France, and what is it known for?",
    "List three tips for writing clear emails.",
    "Write a Python function that returns the square of a number.",
    "Rewrite this sentence to sound more formal: hey, can u send me the file?",
    "If I have 12 apples and give away 5, how many do I have left? Explain.",
    "Tell me a very short story about a cat who learns to fly.",
    "What does a compiler do?",
    "Give me a simple recipe for pancakes.",
    "What are the benefits of drinking water every day?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "How do I reverse a list in Python?",
    "What is the difference between weather and climate?",
    "Suggest a name for a small bakery that sells bread and coffee.",
    "Why do leaves change color in autumn?",
    "Write a haiku about the ocean.",
    "How can I improve my sleep?",
    "Explain what a database index is to a beginner.",
    "What should I pack for a weekend hiking trip?",
    "Translate 'good morning, how are you?' into French.",
    "What is photosynthesis?",
    "Give three ideas for a birthday party for a ten-year-old.",
    "How does a bicycle stay upright when it moves?",
    "Write a short thank-you note to a colleague who helped me with a project.",
    "What is the Pythagorean theorem? Give an example.",
    "Describe the water cycle in simple terms.",
    "What are some good habits for learning a new language?",
    "Explain the difference between a list and a tuple in Python.",
    "Why is exercise good for the brain?",
    "Write a two-line poem about the moon.",
    "What is the boiling point of water, and does it change with altitude?",
    "How do vaccines work?",
)

# What users ask for: a spread of answer lengths, and about half the jobs greedy. Sampled
# jobs stay within what the thresholds were measured on (temperature <= 0.8, top-p <= 0.95:
# docs/adr/0052): a token outside the nucleus cannot be an honest node's.
MAX_TOKENS_CHOICES = (32, 48, 64, 96, 128)
TEMPERATURE_CHOICES = (0.0, 0.0, 0.0, 0.3, 0.7, 0.8)
TOP_P_CHOICES = (0.95, 0.9)


@dataclass(frozen=True)
class VerificationJob:
    """One check's request, as a user would send it."""

    messages: tuple[tuple[str, str], ...]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None


def load_prompts(path: Path | None) -> tuple[str, ...]:
    """The built-in prompts, or the non-empty lines of `path`."""
    if path is None:
        return PROMPTS
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument([FieldViolation("prompts", f"cannot read {path}: {exc}")]) from exc
    prompts = tuple(line.strip() for line in lines if line.strip())
    if not prompts:
        raise InvalidArgument([FieldViolation("prompts", f"{path} holds no prompt")])
    return prompts


def draw_job(rng: random.Random, prompts: Sequence[str] = PROMPTS) -> VerificationJob:
    """A job drawn like a user's: a prompt, a length, greedy or sampled."""
    temperature = rng.choice(TEMPERATURE_CHOICES)
    top_p = 1.0 if temperature == 0 else rng.choice(TOP_P_CHOICES)
    seed = rng.randrange(2**31) if temperature > 0 and rng.random() < 0.5 else None
    return VerificationJob(
        messages=(("user", rng.choice(prompts)),),
        max_tokens=rng.choice(MAX_TOKENS_CHOICES),
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
