"""Troop's client: the async SDK, and (with the HTTP issue) the OpenAI face."""

from troop_client.chat import ChatChunk, ChatOptions, Completion, Message, ModelOffer, Usage
from troop_client.jobs import Job
from troop_client.sdk import Balance, TroopClient
from troop_client.settings import ClientSettings

__all__ = [
    "Balance",
    "ChatChunk",
    "ChatOptions",
    "ClientSettings",
    "Completion",
    "Job",
    "Message",
    "ModelOffer",
    "TroopClient",
    "Usage",
]
