"""The Docker images and the compose stack, checked without a container runtime (none is available where this
runs): the compose file parses and names only files that exist, every path a Dockerfile copies is in the build
context, images are pinned, run as a non-root user and have health checks where they serve, and the versions they
install are the project's."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from deploy.dockerfiles import context_copies, exec_form, ignored_patterns, is_ignored, stages

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
SERVICES = {"postgres", "minio", "minio-buckets", "mlflow", "prefect-server", "prefect-worker", "serve"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pins[_normalized(name)] = version.strip()
    return pins


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def _requirements(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file; anything else (a range, an unpinned name) fails here."""
    pins = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"{path.name}:{number}: {line!r} is not pinned exactly (name==version)"
        pins[_normalized(match[1])] = match[2]
    return pins


def test_there_are_the_four_images():
    assert [p.name for p in DOCKERFILES] == ["flows.Dockerfile", "mlflow.Dockerfile", "serve.Dockerfile",
                                             "train.Dockerfile"]


def test_compose_parses_and_names_only_files_that_exist(compose):
    assert set(compose["services"]) == SERVICES
    built = {}
    for name, service in compose["services"].items():
        for dependency in service.get("depends_on", {}):
            assert dependency in compose["services"], f"{name} depends on an unknown service {dependency}"
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            dockerfile = context / service["build"]["dockerfile"]
            assert context == REPO, f"{name}: the Dockerfiles copy paths relative to the repository root"
            assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
            built[dockerfile.name] = name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):  # a bind mount: the path must be there
                assert (DOCKER / source).exists(), f"{name}: mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name}: named volume {source} is not declared"
    # every image the stack runs that the project builds; train.Dockerfile runs on the GPU box, not in the stack
    assert built == {"flows.Dockerfile": "prefect-worker", "mlflow.Dockerfile": "mlflow",
                     "serve.Dockerfile": "serve"}
    assert (DOCKER / "env.example").is_file()  # the comment at the top tells users to copy it


def _pinned(image: str) -> bool:
    """``name:tag`` with a tag naming one release (a digit in it, not latest), or a digest."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and any(c.isdigit() for c in tag)


def test_every_image_is_pinned_by_an_exact_tag(compose):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name, service in compose["services"].items():
        assert _pinned(service["image"]), f"{name}: {service['image']} is not pinned to one release"
        if "build" in service:
            assert service["image"].endswith(f":{version}"), f"{name}: built images carry the project's version"
    for path in DOCKERFILES:
        names = set()
        for stage in stages(path):
            if stage.base not in names:
                assert _pinned(stage.base), f"{path.name}: FROM {stage.base} is not pinned to one release"
            names.add(stage.name)
            if stage.base.startswith("python:"):
                assert stage.base.startswith("python:3.11."), f"{path.name}: the project runs on Python 3.11"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_exists_in_the_build_context(dockerfile):
    patterns = ignored_patterns(REPO / ".dockerignore")
    copies = [copy for stage in stages(dockerfile) for copy in context_copies(stage)]
    assert copies, f"{dockerfile.name} copies nothing from the context"
    for copy in copies:
        for source in copy.sources:
            assert (REPO / source).exists(), f"{dockerfile.name}:{copy.line}: COPY {source}: no such path"
            assert not is_ignored(source.rstrip("/"), patterns), \
                f"{dockerfile.name}:{copy.line}: COPY {source}, but .dockerignore leaves it out of the context"


def test_the_dockerignore_matcher_reads_patterns_as_docker_does():
    patterns = ["data", "**/__pycache__", ".dvc/cache", "*.egg-info"]
    assert is_ignored("data/corpus/unlabeled.jsonl", patterns)
    assert is_ignored("src/selfsup/serve/__pycache__/app.pyc", patterns)
    assert is_ignored("src/selfsup.egg-info", patterns)
    assert is_ignored(".dvc/cache/files/md5/ab", patterns)
    assert not is_ignored("src/selfsup/datasets/data.py", patterns) and not is_ignored(".dvc/config", patterns)
    # what the images need stays in the context, and the large or private folders do not
    real = ignored_patterns(REPO / ".dockerignore")
    assert not any(is_ignored(p, real) for p in ("src/selfsup/cli.py", "params.yaml", "requirements.lock"))
    assert all(is_ignored(p, real) for p in (".venv/bin/python", "data/x", ".dvc/config.local", "docker/.env",
                                              "mlflow/mlflow.db", ".git/HEAD"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_non_root_user(dockerfile):
    final = stages(dockerfile)[-1]
    user = final.last("USER")
    assert user is not None and user.args.split(":")[0] not in ("root", "0"), f"{dockerfile.name} runs as root"
    # the user is the one made in the image (a uid without a passwd entry has no home for the tools' caches)
    assert any(i.keyword == "RUN" and "useradd" in i.args and user.args in i.args for i in final.instructions)


@pytest.mark.parametrize("dockerfile, path", [("serve.Dockerfile", "/healthz"), ("mlflow.Dockerfile", "/health")])
def test_serving_images_check_their_health_on_the_port_they_expose(dockerfile, path):
    final = stages(DOCKER / dockerfile)[-1]
    (port,) = final.last("EXPOSE").args.split()
    check = " ".join(exec_form(final.last("HEALTHCHECK")))
    assert f"http://127.0.0.1:{port}{path}" in check
    command = exec_form(final.last("CMD"))
    assert command[command.index("--port") + 1] == port and command[command.index("--host") + 1] == "0.0.0.0"


def test_the_compose_stack_wires_mlflow_prefect_and_minio_together(compose):
    services = compose["services"]
    mlflow = services["mlflow"]["command"]
    assert mlflow[:2] == ["mlflow", "server"] and "--serve-artifacts" in mlflow
    assert mlflow[mlflow.index("--backend-store-uri") + 1].startswith("postgresql+psycopg2://")
    bucket = re.fullmatch(r"s3://([a-z0-9-]+)/.*", mlflow[mlflow.index("--artifacts-destination") + 1])[1]
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    prefect_db = services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and prefect_db.endswith("@postgres:5432/prefect")
    assert "CREATE DATABASE prefect;" in (DOCKER / "postgres-init/10-prefect-database.sql").read_text()
    # the init container makes the artifact bucket and the DVC remote's bucket the docs name
    make_buckets = services["minio-buckets"]["command"][0]
    assert f"stack/{bucket}" in make_buckets and "stack/dvc" in make_buckets
    assert "s3://dvc/selfsup" in (REPO / "docs/scaling.md").read_text()
    for client in ("prefect-worker", "serve"):
        assert services[client]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert services["prefect-worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"


WORKER_COMMAND = ["prefect", "worker", "start", "--pool", "selfsup-process", "--type", "process"]


def test_the_flows_image_starts_a_worker_on_the_process_pool(compose):
    command = exec_form(stages(DOCKER / "flows.Dockerfile")[-1].last("CMD"))
    assert command == WORKER_COMMAND
    # the stack runs the image's own command; a `command:` there would silently replace it
    assert "command" not in compose["services"]["prefect-worker"]


def test_image_pins_agree_with_the_project(compose):
    lock = _lock()
    project = {}
    for requirement in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", requirement)
        if match:
            project[_normalized(match[1])] = match[2]
    for path in sorted(DOCKER.glob("*-requirements.txt")):
        for name, version in _requirements(path).items():
            if name in lock:
                assert version == lock[name], f"{path.name}: {name}=={version}, requirements.lock has {lock[name]}"
            if name in project:
                assert version == project[name], f"{path.name}: {name}=={version}, pyproject.toml has {project[name]}"
    # the serve image: the service's dependencies, never torch
    serve = _requirements(DOCKER / "serve-requirements.txt")
    assert {"onnxruntime", "tokenizers", "fastapi", "uvicorn", "mlflow-skinny"} <= set(serve)
    assert not {"torch", "torchvision", "transformers", "mlflow"} & set(serve)
    # torch pins written into the Dockerfiles themselves
    for path in DOCKERFILES:
        for pin in re.findall(r"\b(torch|torchvision)==(\S+)", path.read_text()):
            assert pin[1] == project[pin[0]], f"{path.name}: {pin[0]}=={pin[1]}, pyproject.toml has {project[pin[0]]}"
    assert re.search(r"onnxruntime-gpu==\d+\.\d+\.\d+", (DOCKER / "train.Dockerfile").read_text())
