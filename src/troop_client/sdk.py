"""The async Python SDK: authorize with the coordinator, stream from the worker.

    async with TroopClient.from_settings(ClientSettings.from_env(os.environ)) as troop:
        async for chunk in troop.chat([Message("user", "Hi")]):
            print(chunk.text, end="")

The CLI is built on this, and so is the OpenAI face.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc

from troop_client.chat import ChatChunk, ChatOptions, Completion, Message, Usage
from troop_client.settings import ClientSettings
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import from_rpc_error
from troop_common.keys import Identity
from troop_common.node_proof import NONCE_HEADER, PROOF_HEADER, new_nonce, verify_node_proof
from troop_common.proto import coordinator_pb2, inference_pb2, inference_pb2_grpc
from troop_common.request_context import REQUEST_ID, outgoing_request_id


@dataclass(frozen=True)
class Balance:
    public_key: str
    balance_millicredits: int
    reserved_millicredits: int

    @property
    def credits(self) -> float:
        return self.balance_millicredits / 1000


class TroopClient:
    def __init__(
        self, coordinator: str, identity: Identity, settings: ClientSettings | None = None
    ) -> None:
        self.settings = settings or ClientSettings(coordinator=coordinator)
        self.identity = identity
        self.coordinator = CoordinatorClient(
            coordinator,
            identity,
            timeout_s=self.settings.request_timeout_s,
            tls=self.settings.tls,
        )

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> TroopClient:
        identity = Identity.load_or_create(settings.identity_path)
        return cls(settings.coordinator, identity, settings)

    async def __aenter__(self) -> TroopClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.coordinator.close()

    @property
    def public_key(self) -> str:
        return self.identity.public_key_hex

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: ChatOptions | None = None,
    ) -> AsyncIterator[ChatChunk]:
        """Stream the answer as the worker produces it. Raises TroopError subclasses."""
        model = model or self.settings.model
        request_id = outgoing_request_id()  # one id across coordinator and worker
        grant = await self.coordinator.authorize(model, request_id=request_id)
        async for chunk in self._stream(
            grant, messages, model, options or ChatOptions(), request_id
        ):
            yield chunk

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: ChatOptions | None = None,
    ) -> Completion:
        """The whole answer at once."""
        parts: list[str] = []
        job_id, reason, usage = "", None, Usage()
        async for chunk in self.chat(messages, model=model, options=options):
            job_id = chunk.job_id
            parts.append(chunk.text)
            reason = chunk.finish_reason or reason
            usage = chunk.usage or usage
        return Completion(job_id=job_id, text="".join(parts), finish_reason=reason, usage=usage)

    async def _stream(
        self,
        grant: coordinator_pb2.AuthorizeResponse,
        messages: Sequence[Message],
        model: str,
        options: ChatOptions,
        request_id: str,
    ) -> AsyncIterator[ChatChunk]:
        request = inference_pb2.ChatCompletionRequest(
            model=model,
            messages=[m.to_pb() for m in messages],
            temperature=options.temperature,
            top_p=options.top_p,
            max_tokens=options.max_tokens,
            stop=list(options.stop),
            seed=options.seed,
        )
        nonce = new_nonce()
        metadata = [
            ("authorization", f"Bearer {grant.ticket}"),
            (REQUEST_ID, request_id),
            (NONCE_HEADER, nonce),
        ]
        async with self.settings.tls.channel(grant.endpoint) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            call = stub.ChatCompletion(
                request, metadata=metadata, timeout=self.settings.inference_timeout_s
            )
            proven = False
            try:
                async for chunk in call:
                    if not proven:
                        # Before any token reaches the caller: is this the ticket's node?
                        initial = dict(await call.initial_metadata() or ())
                        verify_node_proof(
                            grant.node_public_key, grant.job_id, nonce, initial.get(PROOF_HEADER)
                        )
                        proven = True
                    yield ChatChunk.from_pb(chunk)
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from exc
            finally:
                call.cancel()

    async def join(self) -> coordinator_pb2.JoinResponse:
        """Create this identity's account with its starter credits (once; idempotent)."""
        return await self.coordinator.join()

    async def balance(self) -> Balance:
        reply = await self.coordinator.get_balance()
        return Balance(reply.public_key, reply.balance_millicredits, reply.reserved_millicredits)

    async def history(
        self, page_size: int = 20, page_token: str = ""
    ) -> coordinator_pb2.ListTransactionsResponse:
        return await self.coordinator.list_transactions(page_size=page_size, page_token=page_token)

    async def nodes(self, model: str = "") -> list[coordinator_pb2.NodeInfo]:
        return list((await self.coordinator.list_nodes(model)).nodes)

    async def models(self) -> list[tuple[str, int]]:
        reply = await self.coordinator.list_models()
        return [(m.id, m.node_count) for m in reply.models]


__all__ = ["Balance", "ChatChunk", "ChatOptions", "Completion", "Message", "TroopClient", "Usage"]
