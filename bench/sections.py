"""What `scripts/bench` runs, in order, and the headline figures each one yields.

Each section calls one benchmark module's `run(...)` with settings that keep the whole
run under 10 minutes on 2 cores, turns its rows into a table, and states the figures
the performance goals are about. Figures compare against a baseline measured in the
same run wherever one exists (bare gRPC, the engine alone, one request at a time,
llama.cpp on the same model, the limits the worker had before).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.profile import summarize_dir
from bench.report import ROOT, Figure, Section, Spec
from bench.streams import table

# Rows of the sections already run, for figures that compare two sections.
_rows: dict[str, list[dict[str, Any]]] = {}


def _one_user(section: Section) -> None:
    from bench import one_user_concurrency

    rows = _rows["one_user"] = one_user_concurrency.run(requests=(4, 8))
    section.details = one_user_concurrency.table(rows)
    for count in (4, 8):
        before = next(
            r for r in rows if r["requests"] == count and r["limits"].startswith("before")
        )
        now = next(r for r in rows if r["requests"] == count and r["limits"].startswith("now"))
        section.figures.append(
            Figure(
                f"one user, {count} concurrent requests through the OpenAI face",
                f"{now['served']} of {count} served (TTFT max {now['ttft_max_ms']:.0f} ms)",
                "all served, queued fairly",
                now["served"] == count,
                f"{before['served']} of {count} with the old limits",
            )
        )


def _llama(section: Section) -> None:
    from bench import llama_cpp

    rows = _rows["llama"] = llama_cpp.run()
    section.details = table(rows)
    single = rows[0]
    section.figures.append(
        Figure(
            "llama.cpp server, same GGUF: 1 stream / 8 concurrent tokens/s",
            f"{single['tokens_per_s']:.1f} / {rows[1]['tokens_per_s']:.1f}",
            "reference",
            None,
        )
    )


def _resume(section: Section) -> None:
    from bench import resume

    rows = resume.run(runs=10)
    section.details = resume.table(rows)
    figures = resume.summary(rows)
    section.figures.append(
        Figure(
            "an answer whose worker is SIGKILLed mid-stream: kill → first resumed chunk",
            f"p50 {figures['after_kill_p50_ms']:.0f} ms, max {figures['after_kill_max_ms']:.0f} ms",
            "within 2 s",
            figures["after_kill_max_ms"] < 2000,
            f"an ordinary gap between two chunks: {figures['chunk_gap_p50_ms']:.0f} ms",
        )
    )


def _value(value: float, unit: str) -> str:
    return f"{value:,.1f} {unit}" if value >= 10 else f"{value:.2f} {unit}"


def _path(section: Section) -> None:
    from bench import inference_path

    rows = inference_path.run(levels=(1, 16, 64), seconds=3.0)
    # Profiled apart: py-spy's sampling slows the processes it samples.
    with tempfile.TemporaryDirectory(prefix="troop-bench-spy-") as spy:
        inference_path.run(levels=(16,), seconds=2.0, profile=Path(spy))
        section.profile = "py-spy at 16 streams (a separate, unmeasured pass):\n\n" + summarize_dir(
            Path(spy)
        )
    section.details = inference_path.markdown(rows)
    for r in rows:
        if r["goal"]:
            section.figures.append(
                Figure(
                    f"{r['metric']}, {r['streams']} stream{'s' if r['streams'] > 1 else ''}",
                    _value(r["value"], r["unit"]),
                    r["goal"],
                    r["met"],
                )
            )


def _ledger(section: Section) -> None:
    from bench import ledger_throughput

    goal_clients = ledger_throughput.GOAL_CLIENTS
    rows = ledger_throughput.run(seconds=4.0, levels=(1, goal_clients, 64))
    # Profiled apart: py-spy's sampling slows the process it samples.
    with tempfile.TemporaryDirectory(prefix="troop-bench-spy-") as spy:
        ledger_throughput.run(seconds=3.0, levels=(goal_clients,), profile_dir=Path(spy))
        section.profile = (
            f"py-spy of the coordinator at {goal_clients} clients (a separate, unmeasured "
            "pass):\n\n" + summarize_dir(Path(spy))
        )
    section.details = ledger_throughput.table(rows)
    for r in rows:
        if r["clients"] != goal_clients:
            continue
        cpu = r["coordinator_cpu_ms_per_cycle"]
        floor = r["floor_tx_per_s"]
        section.figures.append(
            Figure(
                f"authorize + settle cycles/s, {r['backend']}, {r['clients']} clients",
                f"{r['cycles_per_s']:.0f}" + ("" if cpu is None else f" ({cpu:.1f} ms CPU/cycle)"),
                "—" if r["goal_cycles_per_s"] is None else f"≥ {r['goal_cycles_per_s']:,.0f}",
                r["meets_goal"],
                "" if floor is None else f"database alone: {floor:,.0f} one-statement tx/s",
            )
        )


def _heartbeats(section: Section) -> None:
    from bench import heartbeats

    rows = heartbeats.run(nodes=10_000, seconds=4.0)
    section.details = heartbeats.table(rows)
    for r in rows:
        if r["goal"]:
            section.figures.append(
                Figure(
                    f"{r['figure']} ({r['backend']})",
                    _value(float(r["value"]), str(r["unit"])),
                    str(r["goal"]),
                    r["meets"],  # type: ignore[arg-type]
                )
            )


def _engine(section: Section) -> None:
    from bench import engine_batching

    with tempfile.TemporaryDirectory(prefix="troop-bench-spy-") as spy:
        rows = engine_batching.run(dtype="bfloat16", profile=Path(spy))
        section.profile = (
            "py-spy, 3 s of 8 at once (bfloat16; an extra, unmeasured round):\n\n"
            + summarize_dir(Path(spy))
        )
    rows += engine_batching.run(dtype="float32")
    _rows["engine"] = rows
    section.details = table(rows)
    for dtype in ("bfloat16", "float32"):
        mine = [r for r in rows if r["engine"].endswith(dtype)]
        one, eight = mine[0], next(r for r in mine if r["streams"] == 8)
        section.figures.append(
            Figure(
                f"built-in engine ({dtype}), 8 concurrent ÷ one at a time, tokens/s",
                f"{eight['vs_one_at_a_time']:.2f}× ({eight['tokens_per_s']:.0f} tokens/s)",
                "≥ 4×",
                eight["vs_one_at_a_time"] >= 4,
                f"{one['tokens_per_s']:.1f} tokens/s one at a time",
            )
        )
        if "llama" in _rows:
            llama = _rows["llama"][0]["tokens_per_s"]
            ratio = eight["tokens_per_s"] / llama if llama else 0.0
            section.figures.append(
                Figure(
                    f"built-in engine ({dtype}), 8 concurrent ÷ llama.cpp's single stream",
                    f"{ratio:.2f}×",
                    "≥ 1.5×",
                    ratio >= 1.5,
                    f"llama.cpp {llama:.1f} tokens/s",
                )
            )


def _proof(section: Section) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.proof_verification", "--runs", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    section.details = out


def _verification(section: Section) -> None:
    from bench import verification
    from troop_verifier.settings import DEFAULT_INTERVAL_S

    cost = verification.measure_cost(8, 64, DEFAULT_INTERVAL_S, 0.25)
    section.details = "\n".join(f"{key}: {value:.4g}" for key, value in cost.items())
    share = cost["fraction_of_inference_compute"]
    section.figures.append(
        Figure(
            "verification at the default rate (each node once an hour; nodes busy 25%), "
            "share of inference compute, the verifier's pass included",
            f"{share:.2%}",
            "< 1%",
            share < 0.01,
            f"node {cost['node_seconds_per_check']:.2f} s + verifier "
            f"{cost['verifier_seconds_per_check']:.2f} s per check",
        )
    )


ALL = [
    Spec(
        "ledger",
        "The ledger: authorize + countersign + settle (bench/ledger_throughput.py)",
        ".venv/bin/python -m bench.ledger_throughput --seconds 4 --levels 1,16,64 --profile DIR",
        _ledger,
    ),
    Spec(
        "heartbeats",
        "Heartbeats and discovery at 10,000 nodes (bench/heartbeats.py)",
        ".venv/bin/python -m bench.heartbeats --nodes 10000 --seconds 4",
        _heartbeats,
    ),
    Spec(
        "path",
        "The protocol path with a fake engine: added TTFT, token rate, relay ceiling "
        "(bench/inference_path.py)",
        ".venv/bin/python -m bench.inference_path --levels 1,16,64 --seconds 3 --profile DIR",
        _path,
    ),
    Spec(
        "one_user",
        "One user's concurrent requests through the OpenAI face (bench/one_user_concurrency.py)",
        ".venv/bin/python -m bench.one_user_concurrency",
        _one_user,
    ),
    Spec(
        "llama",
        "llama.cpp's server on the same GGUF (bench/llama_cpp.py)",
        ".venv/bin/python -m bench.llama_cpp",
        _llama,
    ),
    Spec(
        "engine",
        "The built-in engine: one at a time against batched (bench/engine_batching.py)",
        ".venv/bin/python -m bench.engine_batching --dtype bfloat16   # and --dtype float32",
        _engine,
    ),
    Spec(
        "resume",
        "An answer resumed on another node after its worker is killed (bench/resume.py)",
        ".venv/bin/python -m bench.resume --runs 10",
        _resume,
    ),
    Spec(
        "verification",
        "Verified models: one check's compute and the default rate's share "
        "(bench/verification.py --cost; thresholds: docs/adr/0052)",
        ".venv/bin/python -m bench.verification --cost",
        _verification,
    ),
    Spec(
        "proof",
        "Proof of hardware: the coordinator's check against the worker's work "
        "(bench/proof_verification.py)",
        ".venv/bin/python -m bench.proof_verification --runs 1",
        _proof,
    ),
]
