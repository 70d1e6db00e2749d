"""The OpenAI face of the client sidecar: `/v1/chat/completions`, `/v1/completions`,
`/v1/models`, served as a gRPC service (`troop.v1.OpenAIService`) that Envoy
transcodes to HTTP/JSON and server-sent events.
"""

from troop_client.openai.errors import OpenAIError, OpenAIErrorResponse, openai_error
from troop_client.openai.service import OpenAIServicer

__all__ = ["OpenAIError", "OpenAIErrorResponse", "OpenAIServicer", "openai_error"]
