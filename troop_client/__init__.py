"""Troop's client: the async SDK, its typed results, and the OpenAI face."""

from troop_client.chat import ChatChunk, ChatOptions, Completion, Message, Usage
from troop_client.results import (
    Balance,
    Grant,
    Job,
    Joined,
    ModelOffer,
    Node,
    Page,
    Transaction,
)
from troop_client.sdk import TroopClient
from troop_client.settings import ClientSettings

__all__ = [
    "Balance",
    "ChatChunk",
    "ChatOptions",
    "ClientSettings",
    "Completion",
    "Grant",
    "Job",
    "Joined",
    "Message",
    "ModelOffer",
    "Node",
    "Page",
    "Transaction",
    "TroopClient",
    "Usage",
]
