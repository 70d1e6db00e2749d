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
from typing import Any

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


def _engine(section: Section) -> None:
    from bench import engine_batching

    rows = engine_batching.run(dtype="bfloat16") + engine_batching.run(dtype="float32")
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


ALL = [
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
        "proof",
        "Proof of hardware: the coordinator's check against the worker's work "
        "(bench/proof_verification.py)",
        ".venv/bin/python -m bench.proof_verification --runs 1",
        _proof,
    ),
]
