"""The coordinator's REST/JSON face: real Envoy in front of the real coordinator."""

from __future__ import annotations

import httpx2 as httpx  # the HTTP client the openai SDK itself ships with

from tests.http.conftest import MODEL
from troop_common.assertions import create_assertion
from troop_common.keys import Identity
from troop_coordinator.http_face import coordinator_http_face


async def test_coordinator_rest_face(mesh, tmp_path) -> None:
    user = Identity.load_or_create(tmp_path / "rest-user.key")
    async with coordinator_http_face(mesh.coordinator) as envoy:
        async with httpx.AsyncClient(base_url=envoy.url, timeout=10) as http:
            key = (await http.get("/v1/public-key")).json()
            assert key["algorithm"] == "RS256" and "public_key_pem" in key  # snake_case
            assert (await http.get("/v1/keys")).json()["keys"][0]["kty"] == "RSA"
            models = (await http.get("/v1/models")).json()["models"]
            (model,) = models
            assert (model["id"], model["node_count"]) == (MODEL, 1)
            # Prices are published before anyone asks (int64 travels as a string in JSON).
            price = model["price"]
            assert (
                int(price["completion_millicredits_per_1k_tokens"])
                > int(price["prompt_millicredits_per_1k_tokens"])
                > 0
            )
            nodes = (await http.get("/v1/nodes")).json()["nodes"]
            assert nodes[0]["endpoint"] == mesh.worker.advertise and "node_id" in nodes[0]

            path = f"/v1/users/{user.public_key_hex}/balance"
            denied = await http.get(path)
            assert denied.status_code == 401
            assert denied.json()["code"] == 16  # UNAUTHENTICATED, as JSON
            signed = {"authorization": f"Bearer {create_assertion(user)}"}
            assert (await http.post("/v1/users/join", json={}, headers=signed)).status_code == 200
            signed = {"authorization": f"Bearer {create_assertion(user)}"}
            balance = (await http.get(path, headers=signed)).json()
            assert int(balance["balance_millicredits"]) == 3_600_000
            assert balance["reserved_millicredits"] == "0"  # zero is printed, not left out
            signed = {"authorization": f"Bearer {create_assertion(user)}"}
            history = await http.get(
                f"/v1/users/{user.public_key_hex}/transactions", headers=signed
            )
            assert history.json()["transactions"][0]["kind"] == "TRANSACTION_KIND_GRANT"

            heartbeat = await http.post("/v1/nodes/heartbeat", json={"node_id": "x"})
            assert heartbeat.status_code == 401
            receipt = await http.post(
                "/v1/transactions/submit", json={"receipt": "", "signature": ""}
            )
            assert receipt.status_code in (400, 401, 404)
            assert "code" in receipt.json()
            # A verifier's verdict (docs/adr/0053): a malformed one is a 400 naming the field.
            verdict = await http.post("/v1/verdicts", json={"verdict": "", "signature": ""})
            assert verdict.status_code == 400
            assert "verdict" in verdict.text and "code" in verdict.json()


async def test_envoys_own_errors_are_json_statuses(mesh) -> None:
    async with coordinator_http_face(mesh.coordinator) as envoy:
        async with httpx.AsyncClient(base_url=envoy.url, timeout=10) as http:
            garbage = await http.post("/v1/nodes/heartbeat", content=b"{not json")
            unknown = await http.get("/v1/no-such-resource")
    assert garbage.status_code == 400
    assert garbage.json()["code"] == 3  # INVALID_ARGUMENT
    assert garbage.json()["message"]
    assert unknown.status_code == 404
    assert unknown.json()["code"] == 5  # NOT_FOUND


async def test_discovery_over_http_is_limited_with_429_and_retry_after(
    start_mesh,
) -> None:
    limits = {"rate_limits": "ListNodes+ListModels=3/3600@ip"}
    async with start_mesh(coordinator_overrides=limits) as mesh:
        async with coordinator_http_face(mesh.coordinator) as envoy:
            async with httpx.AsyncClient(base_url=envoy.url, timeout=10) as http:
                # start_mesh already spent some of this IP's discovery calls.
                codes = [(await http.get("/v1/nodes")).status_code for _ in range(4)]
                refused = await http.get("/v1/models")
                health_free = await http.get("/v1/public-key")
    assert codes[-1] == 429 and refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1000
    assert refused.json()["code"] == 8  # RESOURCE_EXHAUSTED
    assert health_free.status_code == 200  # the public key is never limited
