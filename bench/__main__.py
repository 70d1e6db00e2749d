"""Every benchmark, one command: `scripts/bench` (or `.venv/bin/python -m bench`).

Runs each benchmark of this directory with settings that keep the whole run under
10 minutes on 2 cores, prints every headline figure next to its goal (and the baseline
it is a ratio against, measured in the same run), and rewrites the generated part of
BENCHMARKS.md: the date, the machine, the commands, the figures, each benchmark's own
table, and where the time goes from the profiles taken during the run. The history below
the generated part (older runs, with their context) is kept as it is.

    python -m bench                  # everything, rewrites BENCHMARKS.md
    python -m bench --only engine    # some sections (comma-separated names), prints only
    python -m bench --no-write       # everything, prints only

Benchmarks are not tests: nothing here asserts a time, and nothing in scripts/test runs it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import traceback
from pathlib import Path

from bench import sections
from bench.report import ROOT, Figure, Section, Spec, report, summary, write


def run_section(spec: Spec) -> Section:
    section = Section(spec.name, spec.title, spec.command)
    print(f"==> {spec.title}", flush=True)
    started = time.monotonic()
    try:
        spec.body(section)
    except Exception:  # one broken benchmark must not hide the others' figures
        section.error = traceback.format_exc(limit=3)
        print(section.error, file=sys.stderr)
    section.seconds = time.monotonic() - started
    for figure in section.figures:
        print(f"    {_status(figure)} {figure.name}: {figure.measured} (goal {figure.goal})")
    return section


def _status(figure: Figure) -> str:
    return {True: "met ", False: "MISS", None: "    "}[figure.met]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated section names")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    chosen = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = chosen - {s.name for s in sections.ALL}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {[s.name for s in sections.ALL]}")
    started = dt.datetime.now(dt.UTC)
    began = time.monotonic()
    results = [run_section(s) for s in sections.ALL if not chosen or s.name in chosen]
    wall = time.monotonic() - began
    print()
    print(summary(results))
    print(f"\n{wall / 60:.1f} min in all")
    if not args.no_write and not chosen:
        write(args.output, report(results, started, wall))
        print(f"wrote {args.output}")
    if any(s.error for s in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
