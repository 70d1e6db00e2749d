"""`troop status`'s frame from plain data, no terminal and no network: the nodes table
grows a CHECKS column when the coordinator sends verification records; a refusal by the
discovery rate limit keeps the nodes it had and says when it reads them again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from troop_cli.status import StatusReader
from troop_cli.status_view import Snapshot, ago, render
from troop_client.results import Balance, Node, Page, Verification
from troop_common.errors import RateLimited

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
MODEL = "smollm2-135m-instruct"


def node(verification: Verification | None = None) -> Node:
    return Node(
        node_id="a1b2c3d4e5f6a7b8c9",
        endpoint="10.0.0.2:50052",
        node_public_key="ab" * 32,
        models=(MODEL,),
        active_jobs=1,
        queue_depth=2,
        max_concurrent_jobs=4,
        multiplier=1.25,
        device="cuda",
        cpu_count=8,
        memory_bytes=0,
        last_seen=NOW - timedelta(seconds=3),
        verification=verification,
    )


def test_nodes_show_load_queue_multiplier_and_last_seen_and_checks_when_recorded() -> None:
    plain = render(Snapshot("coord:50051", NOW, nodes=(node(),)), now=NOW)
    assert "CHECKS" not in plain
    row = plain.split("NODES (1 live)\n")[1].splitlines()[1].split()
    assert row == ["a1b2c3d4e5f6…", MODEL, "1/4", "2", "1.25", "cuda", "3", "s", "ago"]

    held = Verification(7, 1, NOW, NOW + timedelta(hours=1), (MODEL,), barred=False)
    barred = Verification(2, 9, NOW, None, (), barred=True)
    text = render(Snapshot("c", NOW, nodes=(node(held), node(barred), node())), now=NOW)
    assert "CHECKS" in text
    assert "7 ok / 1 failed, held" in text and "2 ok / 9 failed, BARRED" in text
    assert text.count(" - ") >= 1  # the node with no record


def test_a_terminal_frame_is_cut_to_its_width_and_times_read_as_ages() -> None:
    snapshot = Snapshot("coord:50051", NOW, nodes=(node(),), balance=Balance("ab" * 32, 1, 0))
    assert max(len(line) for line in render(snapshot, now=NOW, width=30).splitlines()) <= 30
    assert "balance 0.001 credits  reserved 0.000" in render(snapshot, now=NOW)
    assert ago(NOW - timedelta(minutes=5), NOW) == "5 min ago"
    assert ago(NOW - timedelta(hours=3), NOW) == "3 h ago" and ago(None, NOW) == "-"


class LimitedTroop:
    """The SDK's calls `troop status` makes; discovery refused once by the rate limit."""

    def __init__(self) -> None:
        self.discoveries = 0

    async def nodes(self) -> list[Node]:
        self.discoveries += 1
        if self.discoveries == 2:
            raise RateLimited("ListNodes: 100 per 3600 s", retry_after_seconds=600)
        return [node()]

    async def models(self) -> list:
        return []

    async def balance(self) -> Balance:
        return Balance("ab" * 32, 3_000_000, 0)

    async def history(self, page_size: int, page_token: str) -> Page:
        return Page(())


async def test_a_rate_limited_discovery_keeps_the_nodes_and_waits_as_told() -> None:
    troop = LimitedTroop()
    reader = StatusReader(troop, "c", jobs=5, network_interval_s=0)  # type: ignore[arg-type]
    assert len((await reader.refresh()).nodes) == 1
    limited = await reader.refresh()
    assert len(limited.nodes) == 1 and "read again in 600 s" in limited.error
    assert limited.balance is not None and limited.balance.balance_millicredits == 3_000_000
    await reader.refresh()
    assert troop.discoveries == 2  # not asked again before the limit's wait is over
