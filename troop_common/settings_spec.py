"""Settings declared once: each is a dataclass field made by `setting(...)`, and from that
one declaration come reading it from the environment, its `troop` flag, its README row
and its masking in `repr` (docs/adr/0041-settings-declared-once.md).

    @dataclass(frozen=True, repr=False)
    class WorkerSettings(Settings):
        port: int = setting(50052, env="TROOP_WORKER_PORT", flag="--port",
                            parse=integer(), help="where it listens (0: any free port)")

    WorkerSettings.from_env(os.environ)           # the variables, else the defaults
    add_flags(parser, WorkerSettings)              # --port … from the declarations
    WorkerSettings.from_args(args, os.environ)     # a given flag wins over its variable

A value that cannot be used raises ConfigError naming the variable (or the flag it came
from) and what it must be. An unset or empty variable means the default, unless the
declaration says `empty_is_value` (e.g. an empty rate-limit list: no limits). A default
that depends on other settings or the environment is `derive(values, env)`, run after
the fields above it are read; its help says what it is. `secret=True` shows a set
value as '***' in `repr`/`str`; `secret=mask_url_password` shows the URL without its
password. A field made with `group(Cls)` is another settings object read from the
same environment (TLS); a plain field is a knob for tests and embedders only.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

from troop_common.config import parse_choice, parse_float, parse_int

Parse = Callable[[str, str], Any]  # (the variable or flag named in errors, its text) -> value
Derive = Callable[[Mapping[str, Any], Mapping[str, str]], Any]  # (fields so far, env) -> value

_SPEC = "troop.setting"
_GROUP = "troop.group"
FLAG_DEST = "setting:"  # argparse dest prefix of a declared flag, before the field's path
MASK = "***"


@dataclasses.dataclass(frozen=True)
class Spec:
    """One setting's declaration (the field's metadata)."""

    env: str | None
    flag: str | None
    help: str
    parse: Parse
    secret: bool | Callable[[Any], Any]
    shown_default: str | None
    derive: Derive | None
    empty_is_value: bool


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    env: str | None = None,
    flag: str | None = None,
    parse: Parse | None = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    secret: bool | Callable[[Any], Any] = False,
    shown_default: str | None = None,
    derive: Derive | None = None,
    empty_is_value: bool = False,
) -> Any:
    """A dataclass field declaring one setting; `shown_default` is how the README and
    `--help` show a default whose value depends on the machine or is derived."""
    if env is None and flag is None:
        raise TypeError("a setting needs a variable, a flag or both")
    spec = Spec(
        env=env,
        flag=flag,
        help=help,
        parse=parse or text,
        secret=secret,
        shown_default=shown_default,
        derive=derive,
        empty_is_value=empty_is_value,
    )
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={_SPEC: spec}
    )


def group(cls: type[Settings]) -> Any:
    """A field holding another settings object, read from the same environment."""
    return dataclasses.field(default_factory=cls, metadata={_GROUP: cls})


def spec_of(field: dataclasses.Field[Any]) -> Spec | None:
    return field.metadata.get(_SPEC)


def group_of(field: dataclasses.Field[Any]) -> type[Settings] | None:
    return field.metadata.get(_GROUP)


def _fields(cls: type[Any]) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(cls)


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if callable(field.default_factory):
        return field.default_factory()
    raise TypeError(f"setting {field.name} has no default")


class Settings:
    """Base of a frozen settings dataclass (declared with `repr=False`): reading, flags,
    and a `repr` that masks secrets."""

    @classmethod
    def from_env(cls, env: Mapping[str, str], flags: Mapping[str, str] | None = None) -> Self:
        """From `TROOP_*` variables, with `flags` (field path → text) over them."""
        given = flags or {}
        values: dict[str, Any] = {}
        for field in _fields(cls):
            nested = group_of(field)
            spec = spec_of(field)
            if nested is not None:
                prefix = field.name + "."
                inner = {k[len(prefix) :]: v for k, v in given.items() if k.startswith(prefix)}
                values[field.name] = nested.from_env(env, inner)
            elif spec is not None:
                values[field.name] = _read(spec, field, env, given.get(field.name), values)
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str]) -> Self:
        """From the environment, with the declared flags given on the command line over it."""
        return cls.from_env(env, given_flags(args))

    def __repr__(self) -> str:
        shown = []
        for field in _fields(type(self)):
            if field.repr:
                shown.append(f"{field.name}={_shown(spec_of(field), getattr(self, field.name))}")
        return f"{type(self).__name__}({', '.join(shown)})"


def _read(
    spec: Spec,
    field: dataclasses.Field[Any],
    env: Mapping[str, str],
    flag_text: str | None,
    values: Mapping[str, Any],
) -> Any:
    if flag_text is not None and spec.flag is not None:
        return spec.parse(spec.flag, flag_text.strip())
    raw = env.get(spec.env) if spec.env else None
    if raw is not None and (raw.strip() or spec.empty_is_value):
        return spec.parse(spec.env or "", raw.strip())
    if spec.derive is not None:
        return spec.derive(values, env)
    return _default(field)


def _shown(spec: Spec | None, value: Any) -> str:
    if spec is None or not spec.secret or not value:
        return repr(value)
    if callable(spec.secret):
        return repr(spec.secret(value))
    return repr(MASK)


def mask_url_password(url: str) -> str:
    """`postgresql://troop:pw@db/troop` → `postgresql://troop:***@db/troop`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}{MASK}@{host}"))


# The parsers a declaration names: each takes the setting's name and its (stripped) text.


def text(name: str, raw: str) -> str:
    return raw


def integer(minimum: int = 0) -> Parse:
    def parse(name: str, raw: str) -> int:
        return parse_int(name, raw, minimum)

    return parse


def number(*, positive: bool = False, signed: bool = False) -> Parse:
    """A finite number, at least 0 (`positive`: more than 0; `signed`: negative too)."""

    def parse(name: str, raw: str) -> float:
        return parse_float(name, raw, positive=positive, signed=signed)

    return parse


class Choice:
    """One of `choices` (argparse lists them in `--help`)."""

    def __init__(self, *choices: str, casefold: bool = False) -> None:
        self.choices = choices
        self.casefold = casefold

    def __call__(self, name: str, raw: str) -> str:
        return parse_choice(name, raw, self.choices, casefold=self.casefold)


def one_of(*choices: str, casefold: bool = False) -> Choice:
    return Choice(*choices, casefold=casefold)


def path(name: str, raw: str) -> Path:
    return Path(raw).expanduser()


def comma_list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def switch(name: str, raw: str) -> bool:
    """On for 1, true or yes; anything else is off. Its flag takes no value."""
    return raw.lower() in ("1", "true", "yes")


def on_unless_off(name: str, raw: str) -> bool:
    """Off for 0, false, no or off; anything else is on."""
    return raw.lower() not in ("0", "false", "no", "off")


# Flags: argparse options made from the declarations.


def declared(cls: type[Any], prefix: str = "") -> list[tuple[str, Spec, dataclasses.Field[Any]]]:
    """(field path, spec, field) of every declared setting, groups included."""
    found = []
    for field in _fields(cls):
        nested, spec = group_of(field), spec_of(field)
        if nested is not None:
            found += declared(nested, f"{prefix}{field.name}.")
        elif spec is not None:
            found.append((prefix + field.name, spec, field))
    return found


def shown_default(spec: Spec, field: dataclasses.Field[Any]) -> str:
    """The default as the README and `--help` show it."""
    if spec.shown_default is not None:
        return spec.shown_default
    value = _default(field)
    if isinstance(value, bool):
        return "`1`" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        value = ",".join(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`" if value != "" else "empty"


def plain(markdown: str) -> str:
    """Help text for a terminal: links as their words, no backticks."""
    return re.sub(r"\[([^]]+)\]\([^)]+\)", r"\1", markdown).replace("`", "")


def add_flags(
    parser: argparse.ArgumentParser, cls: type[Any], only: Collection[str] | None = None
) -> None:
    """Add the declared flags of `cls` (only the fields in `only`, by path, when given)."""
    for field_path, spec, field in declared(cls):
        if spec.flag is None or (only is not None and field_path not in only):
            continue
        where = f"env {spec.env}, " if spec.env else ""
        help_ = f"{plain(spec.help)} ({where}default {plain(shown_default(spec, field))})"
        options: dict[str, Any] = {"dest": FLAG_DEST + field_path, "help": help_.replace("%", "%%")}
        metavar = spec.flag.lstrip("-").upper().replace("-", "_")
        if spec.parse is switch:
            options.update(action="store_const", const="1")
        elif isinstance(spec.parse, Choice):
            options["choices"] = spec.parse.choices
        else:
            options["metavar"] = metavar
        parser.add_argument(spec.flag, **options)


def given_flags(args: argparse.Namespace) -> dict[str, str]:
    """The declared flags given on the command line, by field path."""
    return {
        name[len(FLAG_DEST) :]: value
        for name, value in vars(args).items()
        if name.startswith(FLAG_DEST) and value is not None
    }


__all__ = [
    "FLAG_DEST",
    "MASK",
    "Choice",
    "Settings",
    "Spec",
    "add_flags",
    "comma_list",
    "declared",
    "given_flags",
    "group",
    "integer",
    "mask_url_password",
    "number",
    "on_unless_off",
    "one_of",
    "path",
    "plain",
    "setting",
    "shown_default",
    "switch",
    "text",
]
