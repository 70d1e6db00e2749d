"""Checks a ChatCompletionRequest before any work: every problem at once, as field violations."""

from __future__ import annotations

import math
from dataclasses import replace

from troop_common.errors import FieldViolation, InvalidArgument
from troop_common.proto import inference_pb2
from troop_common.tickets import Ticket
from troop_worker.engine.types import GenerationRequest

ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256


def validate(
    request: inference_pb2.ChatCompletionRequest, *, max_new_tokens: int
) -> GenerationRequest:
    """The domain request; InvalidArgument listing every violation otherwise."""
    violations: list[FieldViolation] = []
    if not request.model:
        violations.append(FieldViolation("model", "required"))
    if not request.messages:
        violations.append(FieldViolation("messages", "at least one message is required"))
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            violations.append(
                FieldViolation(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}")
            )
    if request.HasField("temperature"):
        t = request.temperature
        if not math.isfinite(t) or not 0.0 <= t <= 2.0:
            violations.append(FieldViolation("temperature", "must be between 0 and 2"))
    if request.HasField("top_p"):
        p = request.top_p
        if not math.isfinite(p) or not 0.0 < p <= 1.0:
            violations.append(FieldViolation("top_p", "must be in (0, 1]"))
    if request.HasField("max_tokens") and not 1 <= request.max_tokens <= max_new_tokens:
        violations.append(
            FieldViolation("max_tokens", f"must be between 1 and {max_new_tokens} on this node")
        )
    if len(request.stop) > MAX_STOP_SEQUENCES:
        violations.append(FieldViolation("stop", f"at most {MAX_STOP_SEQUENCES} sequences"))
    for i, stop in enumerate(request.stop):
        if not stop or len(stop) > MAX_STOP_LENGTH:
            violations.append(
                FieldViolation(f"stop[{i}]", f"must be 1 to {MAX_STOP_LENGTH} characters")
            )
    if violations:
        raise InvalidArgument(violations)
    generation = GenerationRequest.from_pb(request)
    if generation.max_tokens > max_new_tokens:  # the default may exceed a small node cap
        generation = replace(generation, max_tokens=max_new_tokens)
    return generation


def within_ticket(
    request: inference_pb2.ChatCompletionRequest, generation: GenerationRequest, ticket: Ticket
) -> GenerationRequest:
    """The generation held to the bounds the ticket was priced for; InvalidArgument if the
    request asks for more completion tokens than that."""
    if request.HasField("max_tokens") and request.max_tokens > ticket.max_tokens:
        raise InvalidArgument(
            [
                FieldViolation(
                    "max_tokens",
                    f"at most {ticket.max_tokens}, the bound the ticket was reserved for "
                    "(Authorize's max_tokens)",
                )
            ]
        )
    return replace(
        generation,
        max_tokens=min(generation.max_tokens, ticket.max_tokens),
        max_prompt_tokens=ticket.max_prompt_tokens,
    )
