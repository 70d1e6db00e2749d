"""The README's configuration tables, rendered from the settings declarations.

The README holds each table between `<!-- settings:NAME -->` and `<!-- /settings:NAME -->`;
`python -m troop_cli.settings_doc` rewrites them, and a test fails when they differ
from what the declarations render (troop_common.settings_spec).
"""

from __future__ import annotations

import re
from typing import Any

from troop_common.settings_spec import Spec, declared, shown_default

HEADER = "| variable | flag | default | what |\n|---|---|---|---|"


def _cell(value: str) -> str:
    return value.replace("|", "\\|")


def _secrecy(spec: Spec) -> str:
    if not spec.secret:
        return ""
    if callable(spec.secret):
        return "; secret: its password shows as `***` in `repr` and logs"
    return "; secret: shows as `***` in `repr` and logs"


def markdown_table(*classes: type[Any]) -> str:
    """One row per setting of each class, in declaration order; the settings of its
    groups (e.g. TLS) have tables of their own."""
    rows = [HEADER]
    found = [row for cls in classes for row in declared(cls)]
    for field_path, spec, field in found:
        if "." in field_path:
            continue
        what = spec.help + _secrecy(spec)
        rows.append(
            "| "
            + " | ".join(
                [
                    f"`{spec.env}`" if spec.env else "-",
                    f"`{spec.flag}`" if spec.flag else "-",
                    _cell(shown_default(spec, field)),
                    _cell(what),
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- settings:{name} -->", f"<!-- /settings:{name} -->"


def with_table(document: str, name: str, table: str) -> str:
    """`document` with the text between `name`'s markers replaced by `table`;
    ValueError when the markers are missing."""
    start, end = _markers(name)
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.DOTALL)
    if not pattern.search(document):
        raise ValueError(f"no {start} … {end} in the document")
    return pattern.sub(lambda _: f"{start}\n{table}\n{end}", document, count=1)


__all__ = ["HEADER", "markdown_table", "with_table"]
