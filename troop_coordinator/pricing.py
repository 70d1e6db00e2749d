"""What a job costs: the coordinator's model catalog and the charge formula (ADR 0031).

A credit is one second of compute on the reference machine (a 2-core x86 CPU),
so a millicredit is one reference millisecond. A job's charge is the
reference time of the work it did, computed from counted tokens — never from
a clock or a multiplier either side reports:

    per completion token: COMPLETION_MS_PER_BILLION × parameters / 10⁹ ms
    per prompt token:     PROMPT_MS_PER_BILLION     × parameters / 10⁹ ms
    charge = round_half_up((prompt_tokens × prompt_per_1k
                           + completion_tokens × completion_per_1k) / 1000)

The anchors are SmolLM2-135M on the reference machine: it decodes ~24.7
tokens/s (40.5 ms a token → 300 ms per billion parameters) and prefills a
44-token prompt in ~100 ms (≈ 2.3 ms a token → 20 ms per billion). Decoding
is memory-bound and both scale with the weights read per token, so linearly
with the parameter count.

Prices come from the catalog: an operator entry (`TROOP_MODEL_CATALOG`), else
a size in the model id ("llama3.2-3b", "qwen2.5-0.5b-instruct",
"smollm2-135m-instruct"), else `TROOP_DEFAULT_MODEL_PARAMETERS`. What a
worker says about the model it serves never enters a price.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from troop_common.config import ConfigError

COMPLETION_MS_PER_BILLION = 300
PROMPT_MS_PER_BILLION = 20
DEFAULT_MAX_TOKENS = 256
DEFAULT_MAX_PROMPT_TOKENS = 8192
MAX_COMPLETION_TOKENS = 32768
DEFAULT_PARAMETERS = 1_000_000_000
# "7b", "0.5b", "135m", "1.5B" as a dash/underscore/dot-separated part of an id.
_SIZE_IN_NAME = re.compile(r"(?:^|[-_.:/])(\d+(?:\.\d+)?)([bBmM])(?=$|[-_.:/])")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bBmMkK]?)")
_UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


@dataclass(frozen=True)
class ModelPrice:
    """A model's catalog price, in millicredits per 1,000 tokens, and its job bounds."""

    parameters: int
    prompt_per_1k: int
    completion_per_1k: int
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    max_completion_tokens: int = MAX_COMPLETION_TOKENS

    @classmethod
    def for_parameters(cls, parameters: int) -> ModelPrice:
        """The formula's price for a model of this size (at least 1 millicredit per 1k)."""
        return cls(
            parameters=parameters,
            prompt_per_1k=max(1, round(parameters * PROMPT_MS_PER_BILLION / 1_000_000)),
            completion_per_1k=max(1, round(parameters * COMPLETION_MS_PER_BILLION / 1_000_000)),
        )

    def charge(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Millicredits for a job that processed and produced these tokens."""
        total = prompt_tokens * self.prompt_per_1k + completion_tokens * self.completion_per_1k
        return (total + 500) // 1000


def parse_parameters(text: str) -> int:
    """'135m' → 135_000_000, '7b' → 7_000_000_000, '1.5B' …; ValueError otherwise."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a parameter count: {text!r} (e.g. 135m, 7b)")
    value = round(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"not a parameter count: {text!r}")
    return value


def parameters_from_name(model: str) -> int | None:
    """The size a model id states ('llama3.2-3b' → 3e9), or None."""
    found = _SIZE_IN_NAME.findall(model)
    if not found:
        return None
    number, unit = found[-1]
    return round(float(number) * _UNITS[unit.lower()])


def parse_catalog(text: str) -> dict[str, int]:
    """`model=SIZE,model=SIZE` (TROOP_MODEL_CATALOG) → parameters per model id."""
    catalog: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        model, sep, size = item.rpartition("=")
        if not sep or not model.strip():
            raise ConfigError(f"TROOP_MODEL_CATALOG: {item!r} is not model=SIZE (e.g. llama3=8b)")
        try:
            catalog[model.strip()] = parse_parameters(size)
        except ValueError as exc:
            raise ConfigError(f"TROOP_MODEL_CATALOG: {exc}") from None
    return catalog


class ModelCatalog:
    """Prices by model id: the operator's entries, else the size in the id, else a default."""

    def __init__(
        self,
        entries: Mapping[str, int] | None = None,
        *,
        default_parameters: int = DEFAULT_PARAMETERS,
        max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    ) -> None:
        self._entries = dict(entries or {})
        self.default_parameters = default_parameters
        self.max_prompt_tokens = max_prompt_tokens

    def parameters(self, model: str) -> int:
        return self._entries.get(model) or parameters_from_name(model) or self.default_parameters

    def price(self, model: str) -> ModelPrice:
        price = ModelPrice.for_parameters(self.parameters(model))
        return ModelPrice(
            parameters=price.parameters,
            prompt_per_1k=price.prompt_per_1k,
            completion_per_1k=price.completion_per_1k,
            max_prompt_tokens=self.max_prompt_tokens,
        )
