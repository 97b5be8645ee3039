"""deploy/Dockerfile and deploy/Dockerfile.cuda, without a Docker engine: their
instructions parsed and checked against the project, and the CPU image's exact
ENTRYPOINT + CMD + ENV run here, with only the packages the image installs importable,
answering tritonclient."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest's own dependency on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
IMAGES = ("Dockerfile", "Dockerfile.cuda")
# What differs between the two images' final stages: the CUDA libraries' loader path and
# the NVIDIA container toolkit's settings.
CUDA_ONLY_ENV = {"LD_LIBRARY_PATH", "NVIDIA_DRIVER_CAPABILITIES"}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def project_requirements() -> dict[str, Requirement]:
    requirements = (Requirement(r) for r in project()["dependencies"])
    return {canonicalize_name(r.name): r for r in requirements}


def serving_requirements() -> list[Requirement]:
    lines = (DEPLOY / "requirements-serve.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def pinned_version(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    assert spec.operator == "==", f"{requirement}: an exact pin (==) expected"
    return spec.version


def onnxruntime_requirement(image) -> Requirement:
    return Requirement(image.stages[0].args["ONNXRUNTIME"])


def test_serving_requirements_are_pinned_project_dependencies() -> None:
    wanted = project_requirements()
    for requirement in serving_requirements():
        name = canonicalize_name(requirement.name)
        assert name in wanted, f"{name} is not a dependency in pyproject.toml"
        version = pinned_version(requirement)
        assert wanted[name].specifier.contains(version), f"{requirement} against {wanted[name]}"


@pytest.mark.parametrize("name", IMAGES)
def test_onnxruntime_build_satisfies_the_project(dockerfile, name: str) -> None:
    # onnxruntime-gpu is the same `onnxruntime` module: the project's bound applies to it.
    requirement = onnxruntime_requirement(dockerfile(name))
    assert canonicalize_name(requirement.name) == (
        "onnxruntime-gpu" if name.endswith(".cuda") else "onnxruntime"
    )
    assert project_requirements()["onnxruntime"].specifier.contains(pinned_version(requirement))
    installs = " ".join(dockerfile(name).stages[0].runs)
    assert "-r /tmp/requirements-serve.txt" in installs and '"${ONNXRUNTIME}"' in installs
    assert "pip install --no-deps /src" in installs


def setuptools_packages() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}


@pytest.mark.parametrize("name", IMAGES)
def test_image_copies_what_the_project_build_needs(dockerfile, name: str) -> None:
    build = dockerfile(name).stages[0]
    copied = {source for c in build.copies if c.dest.startswith("/src") for source in c.sources}
    assert setuptools_packages() | {"pyproject.toml", project()["readme"]} <= copied


@pytest.mark.parametrize("name", IMAGES)
def test_build_context_admits_every_copied_path(dockerfile, name: str) -> None:
    # .dockerignore leaves everything out, then lets paths back in with "!".
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    admitted = {rule[1:] for rule in rules if rule.startswith("!")}
    for stage in dockerfile(name).stages:
        for source in (s for c in stage.copies if c.from_stage is None for s in c.sources):
            assert source in admitted, f"{name} copies {source}: .dockerignore leaves it out"
            assert (ROOT / source).exists(), f"{name} copies {source}, which does not exist"


@pytest.mark.parametrize("name", IMAGES)
def test_image_bakes_the_repository_where_zoo_serve_looks(dockerfile, name: str) -> None:
    final = dockerfile(name).final
    (baked,) = [c.dest for c in final.copies if c.sources == ["model_repository"]]
    assert final.env["ZOO_REPOSITORY"] == baked
    assert final.entrypoint == ["zoo", "serve"]
    assert final.expose == [8000, 8001, 8002]  # HTTP, gRPC, metrics


@pytest.mark.parametrize("name", IMAGES)
def test_image_runs_as_a_numeric_non_root_user(dockerfile, name: str) -> None:
    # Kubernetes' runAsNonRoot can only check a numeric user.
    final = dockerfile(name).final
    user, _, group = final.user.partition(":")
    assert user.isdigit() and int(user) != 0 and group.isdigit() and int(group) != 0
    assert f"--uid {user} --gid {group}" in " ".join(final.runs)


@pytest.mark.parametrize(("name", "device"), [("Dockerfile", "cpu"), ("Dockerfile.cuda", "cuda")])
def test_image_command_is_what_zoo_serve_accepts(
    dockerfile, parse_serve_args, name: str, device: str
) -> None:
    final = dockerfile(name).final
    settings = parse_serve_args(final.cmd, final.env)
    assert settings.device == device
    ports = (settings.http_port, settings.port, settings.metrics_port)
    assert settings.host == "0.0.0.0" and ports == (8000, 8001, 8002)
    assert sorted(ports) == final.expose
    assert str(settings.repository) == final.env["ZOO_REPOSITORY"]


def test_images_differ_only_in_onnxruntime_and_device(dockerfile) -> None:
    cpu, cuda = dockerfile("Dockerfile"), dockerfile("Dockerfile.cuda")
    assert cpu.global_args == cuda.global_args
    assert cpu.stages[0].runs == cuda.stages[0].runs
    assert [c.sources for c in cpu.final.copies] == [c.sources for c in cuda.final.copies]
    assert cpu.final.entrypoint == cuda.final.entrypoint and cpu.final.user == cuda.final.user
    assert {k: v for k, v in cuda.final.env.items() if k not in CUDA_ONLY_ENV} == cpu.final.env
    assert [a for a in cpu.final.cmd if a != "cpu"] == [a for a in cuda.final.cmd if a != "cuda"]


def test_cuda_library_path_is_the_images_python(dockerfile) -> None:
    # The CUDA wheels' folders sit in the venv's site-packages, named by Python's version.
    image = dockerfile("Dockerfile.cuda")
    python = re.match(r"python:(\d+\.\d+)", image.global_args["PYTHON_IMAGE"])
    assert python is not None
    for folder in image.final.env["LD_LIBRARY_PATH"].split(":"):
        assert folder.startswith(f"/opt/venv/lib/python{python.group(1)}/site-packages/nvidia/")


def test_cpu_image_command_serves_without_the_training_stack(
    dockerfile,
    container_env,
    start_container_command,
    image_pythonpath,
    infer_with_tritonclient,
    repository_copy: Path,
) -> None:
    image = dockerfile("Dockerfile")
    # No --repository: the image's ZOO_REPOSITORY names it.
    env = {**container_env(image), "ZOO_REPOSITORY": str(repository_copy)}
    argv = image.final.entrypoint + image.final.cmd
    server = start_container_command(argv, env, image_pythonpath(image))
    report = infer_with_tritonclient(server.address, repository_copy)
    assert report["ready"] and report["model_ready"], report
    assert report["shape"] == [3, 10] and report["max_diff"] < 1e-5, report
    assert server.stop() == 0, server.log()


@pytest.mark.gpu
def test_cuda_image_command_serves_on_the_gpu(
    dockerfile,
    container_env,
    start_container_command,
    image_pythonpath,
    infer_with_tritonclient,
    repository_copy: Path,
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (needs onnxruntime-gpu)")
    image = dockerfile("Dockerfile.cuda")
    env = {**container_env(image), "ZOO_REPOSITORY": str(repository_copy)}
    argv = image.final.entrypoint + image.final.cmd  # --device cuda: no CPU fall-back
    server = start_container_command(argv, env, image_pythonpath(image))
    report = infer_with_tritonclient(server.address, repository_copy)
    assert report["model_ready"] and report["max_diff"] < 1e-3, report
    assert server.stop() == 0, server.log()


def test_copied_sources_build_a_complete_wheel(dockerfile, tmp_path: Path) -> None:
    # What `pip install --no-deps /src` builds in the image, built here from the files the
    # build stage copies (less what .dockerignore drops), offline with this venv's setuptools.
    src = tmp_path / "src"
    for copy in dockerfile("Dockerfile").stages[0].copies:
        if not copy.dest.startswith("/src"):
            continue
        for source in copy.sources:
            relative = Path(copy.dest).relative_to("/src")
            target = src / relative / source if copy.dest.endswith("/") else src / relative
            if (ROOT / source).is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(ROOT / source, target, ignore=ignore)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    command += ["--no-index", "--quiet", "--wheel-dir", str(tmp_path / "wheels"), str(src)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheels").glob("modelzoo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {"zoo/cli.py", "server/cli.py", "server/web/index.html", "proto/grpc_service.proto"}
    assert wanted <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "zoo = zoo.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
