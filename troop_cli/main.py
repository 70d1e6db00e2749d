"""`troop`: run a coordinator or worker, bring a whole network up, or use one.

Each component is imported only by the command that runs it, so `troop chat`
never loads PyTorch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

from troop_cli import format as fmt
from troop_client.chat import ChatOptions, Message
from troop_client.results import Verification
from troop_client.sdk import TroopClient
from troop_client.settings import ClientSettings
from troop_common.assertions import create_assertion
from troop_common.config import ConfigError
from troop_common.entrypoint import configure_logging
from troop_common.errors import TroopError, Unreachable
from troop_common.node_proof import NONCE_HEADER, new_nonce
from troop_common.presentation import PRESENTATION_HEADER, sign_presentation
from troop_common.settings_spec import add_flags
from troop_common.tickets import unverified_ticket_claims

DEFAULT_QUESTION_MODEL = "smollm2-135m-instruct"


def _client(args: argparse.Namespace) -> TroopClient:
    return TroopClient.from_settings(ClientSettings.from_args(args, os.environ))


async def cmd_chat(args: argparse.Namespace) -> int:
    """One question (the arguments, or stdin when piped), or a conversation (a terminal, or
    `--interactive`): each line a turn, earlier turns sent along as context."""
    options = ChatOptions(
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        stop=args.stop or [],
        seed=args.seed,
    )
    history = [Message("system", args.system)] if args.system else []
    async with _client(args) as troop:
        if args.prompt or not (args.interactive or sys.stdin.isatty()):
            question = " ".join(args.prompt) or (await asyncio.to_thread(sys.stdin.read)).strip()
            if not question:
                raise ConfigError("nothing to ask: give a question, or pipe one in")
            await _answer(troop, [*history, Message("user", question)], args, options)
            return 0
        await _conversation(troop, history, args, options)
    return 0


async def _answer(
    troop: TroopClient, messages: list[Message], args: argparse.Namespace, options: ChatOptions
) -> str:
    """Stream one answer to stdout as it arrives; return its text."""
    parts, usage = [], None
    async for chunk in troop.chat(messages, model=args.model, options=options):
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        parts.append(chunk.text)
        usage = chunk.usage or usage
    sys.stdout.write("\n")
    if usage and args.verbose:
        print(f"[{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens]")
    return "".join(parts)


async def _conversation(
    troop: TroopClient, history: list[Message], args: argparse.Namespace, options: ChatOptions
) -> None:
    terminal = sys.stdin.isatty()
    if terminal:
        print("a conversation: one line per turn; Ctrl-D or /exit to leave", file=sys.stderr)
    while True:
        if terminal:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line or line.strip() in ("/exit", "/quit"):
            return
        if not line.strip():
            continue
        turn = Message("user", line.strip())
        try:
            answer = await _answer(troop, [*history, turn], args, options)
        except TroopError as exc:
            # The conversation goes on; the failed turn is not part of it.
            print(f"troop: {exc.message}", file=sys.stderr)
            continue
        history += [turn, Message("assistant", answer)]


async def _wait_settled(troop: TroopClient, timeout_s: float) -> None:
    """Wait (bounded) until the user has no open reservation: receipts settle after a job."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (await troop.balance()).reserved_millicredits and loop.time() < deadline:
        await asyncio.sleep(0.2)


async def cmd_balance(args: argparse.Namespace) -> int:
    async with _client(args) as troop:
        if args.settled:
            await _wait_settled(troop, args.settle_timeout)
        balance = await troop.balance()
        label = f"{args.label}  " if args.label else ""
        print(
            f"{label}{fmt.credits(balance.balance_millicredits)} credits"
            f"  (reserved {fmt.credits(balance.reserved_millicredits)})"
            f"  key {fmt.short_key(balance.public_key)}"
        )
    return 0


async def cmd_join(args: argparse.Namespace) -> int:
    async with _client(args) as troop:
        joined = await troop.join(invite_code=args.invite or "")
        if joined.already_joined:
            print(f"already joined; balance {fmt.credits(joined.balance_millicredits)} credits")
        else:
            print(f"joined: {fmt.credits(joined.granted_millicredits)} starter credits granted")
    return 0


def _checks(record: Verification | None) -> str:
    """A node's checks passed/failed, and the models it failed lately."""
    if record is None:
        return "-"
    failed = f" failed: {','.join(record.failed_models)}" if record.failed_models else ""
    return f"{record.checks_passed}/{record.checks_failed}{failed}" + (
        " BARRED" if record.barred else ""
    )


async def cmd_nodes(args: argparse.Namespace) -> int:
    async with _client(args) as troop:
        nodes = await troop.nodes(args.model or "")
    rows = [
        [
            n.node_id,
            n.endpoint,
            ",".join(n.models),
            f"{n.active_jobs}/{n.max_concurrent_jobs}",
            f"{n.multiplier:.2f}",
            n.device or "-",
            fmt.timestamp(n.last_seen),
            _checks(n.verification),
            fmt.timestamp(n.verification.last_checked)
            if n.verification and n.verification.last_checked
            else "never",
        ]
        for n in nodes
    ]
    headers = [
        "NODE",
        "ENDPOINT",
        "MODELS",
        "JOBS",
        "MULT",
        "DEVICE",
        "LAST SEEN (UTC)",
        "CHECKS OK/FAILED",
        "LAST CHECKED (UTC)",
    ]
    print(fmt.table(headers, rows) if rows else "no live nodes")
    return 0


async def cmd_models(args: argparse.Namespace) -> int:
    async with _client(args) as troop:
        models = await troop.models()
    rows = [
        [
            m.id,
            str(m.node_count),
            fmt.credits(m.prompt_millicredits_per_1k),
            fmt.credits(m.completion_millicredits_per_1k),
        ]
        for m in models
    ]
    headers = ["MODEL", "NODES", "PROMPT /1K TOKENS", "COMPLETION /1K TOKENS"]
    print(fmt.table(headers, rows) if rows else "no models served right now")
    return 0


async def cmd_history(args: argparse.Namespace) -> int:
    async with _client(args) as troop:
        page = await troop.history(page_size=args.limit, page_token=args.page_token or "")
    rows = [
        [
            fmt.timestamp(t.created_at),
            t.kind,
            fmt.credits(t.amount_millicredits),
            fmt.credits(t.balance_after_millicredits),
            t.job_id or "-",
        ]
        for t in page.items
    ]
    headers = ["WHEN (UTC)", "KIND", "AMOUNT", "BALANCE", "JOB"]
    print(fmt.table(headers, rows) if rows else "no transactions")
    if page.next_page_token:
        print(f"more: troop history --page-token {page.next_page_token}")
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    from troop_cli.status import run_status

    settings = ClientSettings.from_args(args, os.environ)
    async with TroopClient.from_settings(settings) as troop:
        return await run_status(
            troop,
            settings.coordinator,
            once=args.once,
            interval_s=args.interval,
            network_interval_s=args.network_interval,
            jobs=args.jobs,
        )


async def cmd_whoami(args: argparse.Namespace) -> int:
    async with _client(args) as troop:
        print(troop.public_key)
    return 0


async def cmd_auth_header(args: argparse.Namespace) -> int:
    # For grpcurl and curl: `grpcurl -H "$(troop auth-header)" ...`. Good for one call.
    async with _client(args) as troop:
        print(f"authorization: Bearer {create_assertion(troop.identity)}")
    return 0


async def cmd_ticket_headers(args: argparse.Namespace) -> int:
    # For grpcurl against a worker: the ticket, a fresh nonce and this identity's signed
    # presentation of the job to its node (docs/protocol.md), one header a line.
    claims = unverified_ticket_claims(args.ticket)
    if claims is None:
        raise ConfigError('not a ticket from Authorize (its "ticket" field)')
    job_id, node_id = claims
    async with _client(args) as troop:
        nonce = new_nonce()
        print(f"authorization: Bearer {args.ticket}")
        print(f"{NONCE_HEADER}: {nonce}")
        print(f"{PRESENTATION_HEADER}: {sign_presentation(troop.identity, job_id, node_id, nonce)}")
    return 0


async def cmd_coordinator(args: argparse.Namespace) -> int:
    from troop_coordinator.app import serve
    from troop_coordinator.settings import CoordinatorSettings

    settings = CoordinatorSettings.from_args(args, os.environ)
    if args.http_port is None:
        await serve(settings)
        return 0
    from troop_coordinator.http_face import coordinator_http_face, face_upstream, trusting_the_face

    # The REST/JSON face: an Envoy transcoding HTTP to this coordinator's gRPC, dialling it
    # where it listens, over TLS when it serves TLS (ADR 56).
    upstream, upstream_tls = face_upstream(settings)
    settings = trusting_the_face(settings)
    async with coordinator_http_face(
        upstream,
        host=settings.host,
        port=args.http_port,
        xff_num_trusted_hops=settings.xff_trusted_hops,
        upstream_tls=upstream_tls,
    ) as envoy:
        await serve(settings, envoy=envoy)
    return 0


async def cmd_worker(args: argparse.Namespace) -> int:
    if args.action == "benchmark":
        from troop_worker.benchmark import report, run_benchmark

        try:
            result = await asyncio.to_thread(run_benchmark, args.seconds, args.device)
        except ValueError as exc:  # --device cuda without one
            print(f"troop: {exc}", file=sys.stderr)
            return 2
        print(report(result))
        return 0
    from troop_worker.app import serve
    from troop_worker.settings import WorkerSettings

    await serve(WorkerSettings.from_args(args, os.environ))
    return 0


async def cmd_verifier(args: argparse.Namespace) -> int:
    from troop_verifier.app import serve, verifier_key
    from troop_verifier.settings import VerifierSettings

    settings = VerifierSettings.from_args(args, os.environ)
    if args.print_key:
        print(verifier_key(settings).public_key_hex)
        return 0
    return await serve(settings)


async def cmd_client(args: argparse.Namespace) -> int:
    from troop_client.sidecar import run_client

    return await run_client(args)


async def cmd_admin(args: argparse.Namespace) -> int:
    from troop_coordinator import admin
    from troop_coordinator.settings import CoordinatorSettings

    settings = CoordinatorSettings.from_args(args, os.environ)
    if args.admin_command == "audit-ledger":
        return await admin.audit_ledger(settings)
    if args.admin_command == "verify-audit":
        return await admin.verify_audit(settings)
    if args.admin_command == "invite":
        await admin.create_invite(settings)
        return 0
    await admin.rotate_ticket_key(settings)
    return 0


async def cmd_up(args: argparse.Namespace) -> int:
    from troop_cli.up import run_up

    return await run_up(args)


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    # `--model` is each command's own (a request's model, a filter), not the default model.
    add_flags(parser, ClientSettings, only=("coordinator", "identity_file"))


def _coordinator_settings() -> type:
    from troop_coordinator.settings import CoordinatorSettings

    return CoordinatorSettings


def _worker_settings() -> type:
    from troop_worker.settings import WorkerSettings

    return WorkerSettings


def _verifier_settings() -> type:
    from troop_verifier.settings import VerifierSettings

    return VerifierSettings


def _sidecar_settings() -> type:
    from troop_client.sidecar import SidecarSettings

    return SidecarSettings


def build_parser(command_line: str | None = None) -> argparse.ArgumentParser:
    """The `troop` parser; for `command_line` (the command about to run), only that command
    imports its component to add the flags its settings declare (`troop chat` stays light)."""
    parser = argparse.ArgumentParser(
        prog="troop", description="Troop: peer-to-peer AI inference with an honest ledger."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], Awaitable[int]], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    def settings_flags(
        p: argparse.ArgumentParser,
        settings: Callable[[], type],
        only: tuple[str, ...] | None = None,
    ) -> None:
        if command_line in (None, p.prog.split()[-1]):
            add_flags(p, settings(), only or None)

    p = command("up", cmd_up, "run a coordinator and one worker on this machine (embedded default)")
    p.add_argument("--engine", choices=["torch", "openai", "fake"], default="torch")
    p.add_argument("--model", default=DEFAULT_QUESTION_MODEL)
    p.add_argument("--upstream", metavar="URL", help="engine openai: the OpenAI-compatible server")
    p.add_argument("--upstream-model", help="the model's name upstream (default: --model)")
    p.add_argument("--coordinator-port", type=int, default=50051)
    p.add_argument("--worker-port", type=int, default=50052)
    p.add_argument("--data-dir", help="where state lives (default ~/.local/share/troop/up)")
    p.add_argument("--http-port", type=int, default=9000, help="OpenAI API port (0: any free)")

    p = command("coordinator", cmd_coordinator, "run the coordinator (gRPC, default port 50051)")
    settings_flags(p, _coordinator_settings)
    p.add_argument("--http-port", type=int, help="also serve the REST/JSON API through Envoy")

    p = command("admin", cmd_admin, "operator commands on the coordinator's database")
    p.add_argument(
        "admin_command",
        choices=["audit-ledger", "verify-audit", "invite", "rotate-ticket-key"],
        help="audit-ledger: check credits are conserved; verify-audit: check the audit "
        "hash chain; invite: print a one-time admission code; rotate-ticket-key: "
        "start signing tickets with a new key",
    )
    settings_flags(p, _coordinator_settings, only=("data_dir", "database_url"))

    p = command("worker", cmd_worker, "run a worker (gRPC, default port 50052)")
    p.add_argument(
        "action",
        nargs="?",
        choices=["benchmark"],
        help="benchmark: measure this machine as a proof of hardware would, no coordinator",
    )
    p.add_argument("--seconds", type=float, default=2.0, help="benchmark: how long to run")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    settings_flags(p, _worker_settings)

    p = command(
        "verifier",
        cmd_verifier,
        "check that nodes serve the model they claim (the operator's; docs/adr/0052)",
    )
    p.add_argument(
        "--print-key",
        action="store_true",
        help="print the verifier's public key (for TROOP_VERIFIER_KEYS) and exit",
    )
    settings_flags(p, _verifier_settings)

    p = command(
        "client", cmd_client, "run the OpenAI-compatible sidecar (http://localhost:9000/v1)"
    )
    settings_flags(p, _sidecar_settings)

    p = command(
        "chat",
        cmd_chat,
        "ask a question (or pipe one in), or talk: no question on a terminal starts a "
        "conversation; prints answers as they arrive",
    )
    _add_client_options(p)
    p.add_argument("prompt", nargs="*")
    p.add_argument(
        "-i", "--interactive", action="store_true", help="a conversation, even from a pipe"
    )
    p.add_argument("--model")
    p.add_argument("--system")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--stop", action="append")
    p.add_argument("--seed", type=int)
    p.add_argument("-v", "--verbose", action="store_true", help="print token usage")

    p = command("balance", cmd_balance, "your credits")
    _add_client_options(p)
    p.add_argument("--settled", action="store_true", help="wait for open reservations to settle")
    p.add_argument("--settle-timeout", type=float, default=30.0)
    p.add_argument("--label", default="", help="text to print before the balance")

    p = command("join", cmd_join, "create your account and receive the starter credits")
    _add_client_options(p)
    p.add_argument(
        "--invite",
        metavar="CODE",
        help="one-time code from the operator (TROOP_ADMISSION=invite); "
        "proof of work, when the coordinator asks for it, is solved automatically",
    )

    p = command("nodes", cmd_nodes, "the live worker nodes")
    _add_client_options(p)
    p.add_argument("--model")

    p = command("models", cmd_models, "the models live nodes serve")
    _add_client_options(p)

    p = command("history", cmd_history, "your ledger entries, newest first")
    _add_client_options(p)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--page-token")

    p = command(
        "status",
        cmd_status,
        "a live view of the network and your account: nodes, models, load, your balance "
        "and your last jobs; full screen on a terminal until Ctrl-C",
    )
    _add_client_options(p)
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between frames")
    p.add_argument(
        "--network-interval",
        type=float,
        default=90.0,
        help="seconds between reads of nodes and models (the coordinator limits discovery "
        "to 100 calls an hour per address by default)",
    )
    p.add_argument("--jobs", type=int, default=10, help="how many of your last jobs to show")

    p = command("whoami", cmd_whoami, "your public key (your identity on the network)")
    _add_client_options(p)

    p = command(
        "auth-header",
        cmd_auth_header,
        "print a one-call `authorization: Bearer <assertion>` header for grpcurl or curl",
    )
    _add_client_options(p)
    p = command(
        "ticket-headers",
        cmd_ticket_headers,
        "print the three headers that present a ticket to its worker (for grpcurl)",
    )
    p.add_argument("ticket", help='the "ticket" field of an Authorize response')
    _add_client_options(p)
    return parser


# Long-running commands log what they do (INFO); the others only what went wrong.
SERVER_COMMANDS = {"up", "coordinator", "worker", "client", "verifier"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv and not argv[0].startswith("-") else None).parse_args(argv)
    configure_logging("INFO" if args.command in SERVER_COMMANDS else "WARNING")
    try:
        code = asyncio.run(args.handler(args))
    except ConfigError as exc:
        print(f"troop: {exc}", file=sys.stderr)
        code = 2
    except Unreachable as exc:
        print(f"troop: {exc.message}", file=sys.stderr)
        if exc.target.startswith("the coordinator"):
            print(
                "  is it running? `troop up` starts one on this machine; "
                "--coordinator HOST:PORT or TROOP_COORDINATOR points elsewhere",
                file=sys.stderr,
            )
        code = 1
    except TroopError as exc:
        print(f"troop: {exc.message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    main()
