"""The README's configuration tables, from the settings declarations of every component.

    python -m troop_cli.settings_doc          # rewrite the tables in README.md
    python -m troop_cli.settings_doc --check  # exit 1 when README.md differs

The CLI is the one package that may import every component (ADR 1), so the list of
tables lives here; rendering is troop_common.settings_table's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from troop_common.settings_table import markdown_table, with_table

README = Path(__file__).resolve().parents[1] / "README.md"


def tables() -> dict[str, tuple[type[Any], ...]]:
    """README marker name → the settings classes its table lists."""
    from troop_client.settings import ClientSettings
    from troop_client.sidecar import SidecarSettings
    from troop_common.resilience import ResilienceSettings
    from troop_common.tls import TlsSettings
    from troop_coordinator.settings import CoordinatorSettings
    from troop_verifier.settings import VerifierSettings
    from troop_worker.settings import WorkerSettings

    return {
        "coordinator": (CoordinatorSettings,),
        "worker": (WorkerSettings,),
        "client": (ClientSettings, SidecarSettings),
        "verifier": (VerifierSettings,),
        "tls": (TlsSettings,),
        "resilience": (ResilienceSettings,),
    }


def rendered(readme: str) -> str:
    """`readme` with every configuration table rendered from the declarations."""
    for name, classes in tables().items():
        readme = with_table(readme, name, markdown_table(*classes))
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m troop_cli.settings_doc", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report a difference")
    args = parser.parse_args(argv)
    current = README.read_text()
    wanted = rendered(current)
    if wanted == current:
        return 0
    if args.check:
        print(
            f"{README.name}: the configuration tables differ from the declarations; "
            "run python -m troop_cli.settings_doc",
            file=sys.stderr,
        )
        return 1
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
