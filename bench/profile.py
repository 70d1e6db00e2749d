"""Where a process's time went: a summary of py-spy's collapsed stacks (`--format raw`).

Samples that wait rather than work (an event loop in `select`, a thread in `wait` or
blocked on its work queue) are counted apart as "waiting", then two views of the rest:
- by package, self time: the package of the innermost frame (`grpc`, `sqlalchemy`,
  `torch`, `asyncio`, `troop_common`, ...) — what the CPU was doing;
- by Troop function, inclusive: the innermost frame in Troop's own code — which of our
  calls it was doing it for.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]+)(?::\d+)?\)$")
OURS = ("troop_common/", "troop_coordinator/", "troop_worker/", "troop_client/", "troop_cli/")
# Innermost frames of a thread that is blocked, not computing (py-spy samples those too).
WAITING = {
    ("select", "selectors.py"),
    ("wait", "threading.py"),
    ("_wait_for_tstate_lock", "threading.py"),
    ("_worker", "thread.py"),
    ("get", "queue.py"),
}


def _package(file: str) -> str:
    for ours in OURS:
        if ours in file:
            return ours.rstrip("/")
    parts = file.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    first = parts[0] if parts else file
    return first.removesuffix(".py") if len(parts) > 1 or first.endswith(".py") else first


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for raw in stack.split(";"):
        match = FRAME.match(raw.strip())
        if match:
            frames.append((match["function"], match["file"]))
    return frames


def summarize(path: Path, top: int = 6) -> str:
    """Markdown: the top packages (self) and Troop functions (inclusive), as shares."""
    packages: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = _frames(stack)
        if not frames:
            continue
        samples = int(count)
        total += samples
        function, file = frames[-1]
        if (function.rsplit(".", 1)[-1], file.rsplit("/", 1)[-1]) in WAITING:
            waiting += samples
            continue
        packages[_package(frames[-1][1])] += samples
        mine = [f for f in frames if any(o in f[1] for o in OURS)]
        where = f"{mine[-1][0]} ({mine[-1][1].rsplit('/', 1)[-1]})" if mine else "outside Troop"
        ours[where] += samples
    if not total:
        return f"- {path.stem}: no samples"

    working = max(1, total - waiting)

    def shares(counter: Counter[str]) -> str:
        return ", ".join(f"{name} {n / working:.0%}" for name, n in counter.most_common(top))

    return (
        f"- {path.stem} ({total} samples, {waiting / total:.0%} waiting) — of the rest, "
        f"by package: {shares(packages)}\n"
        f"  - by Troop function: {shares(ours)}"
    )


def summarize_dir(directory: Path, top: int = 6) -> str:
    """One summary per profile file under `directory` (sorted by path)."""
    files = sorted(p for p in directory.rglob("*.txt") if p.stat().st_size)
    return "\n".join(
        summarize(p, top).replace(f"- {p.stem} ", f"- {p.relative_to(directory)} ", 1)
        for p in files
    )


def start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy recording `pid` for `seconds` into `out` (collapsed stacks), in the background;
    None when py-spy is missing."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    command = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    command += ["--rate", "250", "--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def recording(out: Path | None, pids: dict[str, int], seconds: float) -> Iterator[None]:
    """py-spy on each process for `seconds`, into `out/<name>.txt` (nothing when `out` is
    None or py-spy is missing)."""
    if out is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    recorders = [start(pid, seconds, out / f"{name}.txt") for name, pid in pids.items()]
    try:
        yield
    finally:
        for recorder in recorders:
            if recorder is not None:
                recorder.wait(timeout=seconds + 30)
