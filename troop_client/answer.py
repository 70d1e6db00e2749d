"""One answer, possibly from several nodes: what the caller was shown, and where to go next.

A node can fail at any point of an answer. Before its first token, any refusal of the node
itself (unreachable, full, refusing the ticket, failing its node proof, a stream that broke)
sends the job to another node; the failed job's countersignature of 0 returns its
reservation at once. After tokens were shown, the answer **resumes**: the SDK authorizes
again without the failed node and asks the next one to continue the reply from the text
shown so far (`ChatCompletionRequest.continuation`), so the caller sees one unbroken stream.
Each node is paid for what it delivered: the failed job is countersigned with what arrived
from it, the resumed job is its own job. Of these failures only the transport's
(`TroopError.transient`) count towards the node's breaker (troop_client.workers); a node
whose breaker is open fails at once, before dialling, and goes elsewhere like an
unreachable one.

Resuming is exact for greedy decoding (temperature 0: the continuation is the answer the
first node would have given, token for token on the PyTorch engine in float32) and a valid
sample otherwise. It is not offered where it cannot be honest:
- a seeded sample (temperature > 0 with a seed): its tokens after the seam would not be the
  seed's;
- `resume_attempts` resumes already spent (`TROOP_RESUME_ATTEMPTS`, 0: never resume);
- the answer already reached its token bound.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from troop_client.chat import (
    DEFAULT_MAX_TOKENS,
    ChatChunk,
    ChatOptions,
    Message,
    Usage,
    prompt_token_bound,
)
from troop_common.errors import InvalidArgument, TroopError


@dataclass
class AnswerSoFar:
    """The answer across the nodes that served it; `shown` each chunk as it goes out."""

    messages: Sequence[Message]
    options: ChatOptions
    node_attempts: int  # nodes tried before the first token
    resume_attempts: int  # resumes after it
    text: str = ""
    tokens: int = 0  # chunks with text shown: each carried at least one token
    resumes: int = 0
    excluded: list[str] = field(default_factory=list)  # nodes that failed this answer
    _before_node: int = 0  # `tokens` when the current node started

    @property
    def max_tokens(self) -> int:
        return self.options.max_tokens or DEFAULT_MAX_TOKENS

    def next_bounds(self) -> tuple[int, int]:
        """(max_tokens, max_prompt_tokens) for the next node's Authorize: the tokens still
        allowed, and a prompt that includes the reply so far (a token is at least a byte)."""
        return (
            self.max_tokens - self.tokens,
            prompt_token_bound(self.messages) + len(self.text.encode()),
        )

    def next_options(self) -> ChatOptions:
        """The options the next node streams with (its share of the token bound)."""
        self._before_node = self.tokens
        if not self.text:
            return self.options
        return dataclasses.replace(self.options, max_tokens=self.max_tokens - self.tokens)

    def shown(self, chunk: ChatChunk) -> ChatChunk:
        """Record `chunk` as shown; the last one's usage covers the whole answer: the
        earlier nodes' tokens are completion, not the resumed node's prompt."""
        self.text += chunk.text
        self.tokens += bool(chunk.text)
        earlier = self._before_node
        if chunk.usage is None or not earlier:
            return chunk
        usage = Usage(
            prompt_tokens=max(0, chunk.usage.prompt_tokens - earlier),
            completion_tokens=chunk.usage.completion_tokens + earlier,
        )
        return dataclasses.replace(chunk, usage=usage)

    def go_elsewhere(self, failure: TroopError, node_id: str) -> bool:
        """Whether, after `node_id` failed with `failure`, another node should take over
        (and the node is then excluded)."""
        if isinstance(failure, InvalidArgument):
            return False  # the request itself: every node would say so
        if self.text:
            if not (failure.transient and self._resumable()):
                return False
            self.resumes += 1
        elif len(self.excluded) + 1 >= self.node_attempts:
            return False
        self.excluded.append(node_id)
        return True

    def _resumable(self) -> bool:
        options = self.options
        seeded_sample = options.seed is not None and options.temperature != 0
        return (
            not seeded_sample
            and self.resumes < self.resume_attempts
            and self.tokens < self.max_tokens
        )
