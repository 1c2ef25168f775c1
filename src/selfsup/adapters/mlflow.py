"""MLflow adapter: the only module that imports ``mlflow``. Runs, parent (pipeline) runs, and the registry."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow import MlflowClient

from selfsup.config import TrackingConfig

_MAX_PARAM = 6000  # MLflow's limit on a param value (chars)


@contextlib.contextmanager
def _artifact_bars_only_on_a_terminal():
    """MLflow's "Downloading artifacts" bar, unless the user set MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR, only where
    someone watches: in a stage's log file each download leaves a bar (11 in the register stage of one run, from
    logging the models, and one per registry download)."""
    if "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" in os.environ or sys.stderr.isatty():
        yield
        return
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)


def _connect(cfg: TrackingConfig) -> str:
    """Point MLflow at the store (``MLFLOW_TRACKING_URI`` wins) and make sure the experiment exists with an
    artifact location under ``mlflow/`` (a SQLite store would otherwise write ./mlruns), or, on a tracking server,
    the server's own artifact store."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = from_env or cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        # absolute, because MLflow keeps one store (and its pooled connections) per URI string for the life of the
        # process: a relative path would keep pointing at the first project's database after a change of folder
        path = Path(uri.removeprefix("sqlite:///")).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{path}"
    mlflow.set_tracking_uri(uri)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses); left there, it would win over the next
    # configuration this process connects with, so the variable is put back as the user had it
    if from_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    client = MlflowClient()
    with store_errors(uri, "connecting"):
        return _experiment_id(client, cfg, uri)


def _experiment_id(client: MlflowClient, cfg: TrackingConfig, uri: str) -> str:
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None and uri.startswith("sqlite:///"):
        _follow_moved_repository(Path(uri.removeprefix("sqlite:///")), experiment.artifact_location,
                                 cfg.artifact_location)
    if experiment is None:
        location = cfg.artifact_location
        if "://" not in location and uri.startswith(("http://", "https://")):
            # a tracking server keeps artifacts where it was started to (--artifacts-destination, served over HTTP
            # to every client); a folder on this machine would be out of reach of the other machines using it
            return client.create_experiment(cfg.experiment)
        if "://" not in location:
            location = Path(location).resolve().as_uri()
        return client.create_experiment(cfg.experiment, artifact_location=location)
    return experiment.experiment_id


# What a store that is down, unreachable or failing raises (requests' errors are OSErrors); anything else is a bug.
STORE_ERRORS = (mlflow.exceptions.MlflowException, OSError)


@contextlib.contextmanager
def store_errors(uri: str, doing: str) -> Iterator[None]:
    """Turn a failing store into ``TrackingUnavailable`` with the store's address and what was being done."""
    from selfsup.errors import TrackingUnavailable

    try:
        yield
    except STORE_ERRORS as err:
        raise TrackingUnavailable(
            f"MLflow tracking store {uri} failed while {doing} ({type(err).__name__}: {str(err)[:300]}). Nothing was "
            f"logged or registered by this step; start the server (or point MLFLOW_TRACKING_URI at one that runs) "
            f"and run it again, or set tracking.enabled=false to run untracked") from err


# Where MLflow's SQL store keeps absolute artifact paths (``file:///…`` URIs, or plain paths for the Default
# experiment); columns a given MLflow version lacks are skipped.
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"), ("model_versions", "storage_location"),
                     ("model_versions", "source"))


def _follow_moved_repository(db: Path, stored_location: str, configured_location: str) -> None:
    """Make a moved or copied repository's SQLite store point at its own artifacts.

    MLflow writes absolute artifact paths into the store; in a copy of the repository they would still name the
    original, so the copy would log into (and read from) the original's ``mlflow/artifacts``. When the store lives
    under the working directory, the configured artifact location is relative (the default ``mlflow/artifacts``)
    and the experiment's stored location is that same relative path under another folder, every stored path under
    that folder is rewritten to the working directory, in one transaction, before anything is logged. A store
    outside the working directory (``MLFLOW_TRACKING_URI`` naming another project's database) is never rewritten."""
    import sqlite3
    import sys
    from urllib.parse import unquote, urlparse

    relative = Path(configured_location)
    if "://" in configured_location or relative.is_absolute():
        return
    here = Path.cwd().resolve()
    if not db.resolve().is_relative_to(here):
        return
    stored = Path(unquote(urlparse(stored_location).path)) if stored_location.startswith("file://") \
        else Path(stored_location)
    if stored == here / relative or stored.parts[-len(relative.parts):] != relative.parts:
        return
    old_root = Path(*stored.parts[:-len(relative.parts)])
    renames = [(f"{old_root.as_uri()}/", f"{here.as_uri()}/"), (f"{old_root}/", f"{here}/")]
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection, connection:
        for table, column in _LOCATION_COLUMNS:
            if column not in {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}:
                continue
            for old, new in renames:
                connection.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                                   f"WHERE substr({column}, 1, ?) = ?", (new, len(old) + 1, len(old), old))
    print(f"MLflow store {db}: made in {old_root}, now in {here} (the repository was moved or copied); its "
          f"artifact paths now point here, so nothing is written into or read from the original",
          file=sys.stderr)


class MlflowTracker:
    """Logs into one run. Metrics are buffered and written with ``log_batch``, because one synchronous
    ``log_metrics`` call per training step is one SQLite transaction (measured 17 ms a call on a busy 2-core machine).

    A store that fails mid-run (a tracking server stopped, a network gone) must not cost the training it records:
    the first failing call (after MLflow's own HTTP retries, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``) is reported on
    stderr with the store, the run and what was being logged, and every later call is skipped (``lost`` says why),
    so the stage finishes and writes its outputs; its numbers are in the stage's own metrics files."""

    FLUSH_EVERY = 500  # buffered metric values; MLflow accepts up to 1,000 per batch

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._client = MlflowClient()
        self._pending: list = []
        self.lost: str | None = None  # the failure that stopped logging into this run

    def _store(self, doing: str, call, *args, **kwargs) -> None:
        if self.lost is not None:
            return
        try:
            call(*args, **kwargs)
        except STORE_ERRORS as err:
            import sys

            self.lost = f"{type(err).__name__}: {str(err)[:300]}"
            print(f"WARNING: MLflow tracking store {mlflow.get_tracking_uri()} failed while logging {doing} to run "
                  f"{self.run_id} ({self.lost}). The stage goes on and keeps its outputs; nothing more is logged to "
                  f"this run, whose record in MLflow ends here (its numbers are in the stage's metrics files).",
                  file=sys.stderr, flush=True)

    def flush(self) -> None:
        """Write the buffered metrics (also done every ``FLUSH_EVERY`` values and when the run ends)."""
        while self._pending and self.lost is None:
            chunk, self._pending = self._pending[:1000], self._pending[1000:]
            self._store(f"{len(chunk)} metric values", self._client.log_batch, self.run_id, metrics=chunk,
                        synchronous=True)

    def log_params(self, params: dict[str, Any]) -> None:
        clean = {k: (str(v)[:_MAX_PARAM]) for k, v in params.items()}

        def new_params() -> None:
            existing = self._client.get_run(self.run_id).data.params
            mlflow.log_params({k: v for k, v in clean.items() if k not in existing}, run_id=self.run_id)

        self._store("parameters", new_params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        if self.lost is not None:
            return
        timestamp = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), timestamp, step or 0) for k, v in metrics.items()]
        if len(self._pending) >= self.FLUSH_EVERY:
            self.flush()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        log = self._client.log_artifacts if path.is_dir() else self._client.log_artifact
        self._store(f"the artifact {path}", log, self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._store(f"the tag {key}", self._client.set_tag, self.run_id, key, str(value))

    def end(self, status: str) -> None:
        self.flush()
        self._store(f"the run's end ({status})", self._client.set_terminated, self.run_id, status)


def _pipeline_parent(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str:
    """Find or create the parent run that groups every stage of one pipeline run."""
    key = tags["pipeline_key"]
    found = client.search_runs([experiment_id], filter_string=f"tags.pipeline_key = '{key}' and tags.stage = 'pipeline'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"pipeline {key}", tags={**tags, "stage": "pipeline"})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@contextlib.contextmanager
def _ended(run_id: str) -> Iterator[MlflowTracker]:
    """Track into ``run_id``; the run ends FINISHED, or FAILED when the body raises."""
    tracker = MlflowTracker(run_id)
    try:
        yield tracker
    except BaseException:
        tracker.end("FAILED")  # the curves up to the failure are what a user debugs with
        raise
    tracker.end("FINISHED")


@contextlib.contextmanager
def stage_run(cfg: TrackingConfig, name: str, tags: dict[str, str]) -> Iterator[MlflowTracker]:
    experiment_id = _connect(cfg)
    client = MlflowClient()
    with store_errors(mlflow.get_tracking_uri(), f"starting the run {name}"):
        parent = _pipeline_parent(client, experiment_id, tags)
        run = client.create_run(experiment_id, run_name=name, tags={**tags, "mlflow.parentRunId": parent})
    with _ended(run.info.run_id) as tracker:
        yield tracker


TEXT_MODEL_FILES = ("tokenizer.json", "labels.json")  # beside model.onnx, they make an export a text classifier


def _requirements(*packages: str) -> list[str]:
    """Pins of the installed versions: the ones the model was exported and checked with."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in packages]


def register_onnx(cfg: TrackingConfig, run_id: str, onnx_path: Path, name: str, metrics: dict[str, float],
                  tags: dict[str, str], extra_files: list[Path], fingerprint: str) -> tuple[int, bool]:
    """Log the exported model to ``run_id`` and register it as a new version of ``name``; returns ``(version, new)``.

    A text classifier (``extra_files`` holds ``tokenizer.json`` and ``labels.json``) is logged as an MLflow pyfunc
    (``selfsup.serve.pyfunc``: texts in, labels out, for any MLflow client); any other model (the image encoder)
    with the ONNX flavor, its ``extra_files`` beside it.

    ``fingerprint`` (the SHA-256 of the ONNX file; for the embedder, of the ONNX file and its indexes together) is
    stored as the version tag ``onnx_sha256``; a model already
    registered under ``name`` with the same fingerprint is not registered again (``new`` is False).

    The version is created with all its tags in one registry call (one transaction in the store), after the model's
    files are logged: a store that fails or stops part-way leaves at most logged files that no version points to,
    never a version without its fingerprint and numbers, so the next run registers the model exactly once."""
    _connect(cfg)
    client = MlflowClient()
    with store_errors(mlflow.get_tracking_uri(), f"registering {name}"):
        for existing in _search_versions(client, name):
            if existing.tags.get("onnx_sha256") == fingerprint:
                return int(existing.version), False
        is_text = set(TEXT_MODEL_FILES) <= {Path(p).name for p in extra_files}
        # logging a model reads it back from the artifact store (a "Downloading artifacts" bar per model)
        with _artifact_bars_only_on_a_terminal():
            with mlflow.start_run(run_id=run_id):
                log = _log_text_pyfunc if is_text else _log_onnx_flavor
                model_uri = log(Path(onnx_path), [Path(p) for p in extra_files])
            all_tags = {**{f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()}, **tags,
                        "onnx_sha256": fingerprint}
            version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in all_tags.items()}).version
    return int(version), True


def _log_onnx_flavor(onnx_path: Path, extra_files: list[Path]) -> str:
    import onnx

    info = mlflow.onnx.log_model(
        onnx.load(str(onnx_path)), name="onnx_model",
        pip_requirements=_requirements("onnxruntime", "onnx"),
        extra_files=[str(p) for p in extra_files] or None,
        save_as_external_data=False,  # one self-contained model.onnx, as exported
    )
    return info.model_uri


def _log_text_pyfunc(onnx_path: Path, extra_files: list[Path]) -> str:
    """Log the exported folder as the artifact of a ``selfsup.serve.pyfunc`` "model from code": MLflow runs that
    code at load time instead of unpickling a class. The selfsup package's source goes with it (``code_paths``),
    so a client without selfsup installed can load it too.

    No signature (nor input example, from which MLflow would infer one): with the signature of a list of strings,
    MLflow turns every input into a DataFrame and keeps its first column, so a DataFrame with ``id`` before
    ``text`` would be answered on its ids; ``selfsup.serve.pyfunc.texts_of`` checks the input itself."""
    import shutil
    import tempfile

    from selfsup.serve.pyfunc import MODEL_ARTIFACT, MODEL_CODE

    package = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / MODEL_ARTIFACT
        folder.mkdir()
        for path in [onnx_path, *extra_files]:
            shutil.copy(path, folder / path.name)
        code = Path(tmp) / "selfsup_text_classifier.py"
        code.write_text(MODEL_CODE)
        source = Path(tmp) / "code" / package.name
        shutil.copytree(package, source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        info = mlflow.pyfunc.log_model(
            name="text_classifier", python_model=str(code), artifacts={MODEL_ARTIFACT: str(folder)},
            code_paths=[str(source)],
            pip_requirements=_requirements("onnxruntime", "tokenizers", "numpy"),
        )
    return info.model_uri


# ------------------------------------------------------------------------------------------------ registry


def _search_versions(client: MlflowClient, name: str) -> list:
    """Every version of ``name``; [] when no model of that name is registered (MLflow returns an empty list then,
    it does not raise). Any error (a locked, damaged or unreachable store) propagates: an empty answer would skip
    the duplicate check of ``register_onnx`` and register the same model again."""
    return list(client.search_model_versions(f"name = '{name}'"))


def _not_registered(err: mlflow.exceptions.MlflowException) -> bool:
    """The one MLflow error that means "no such registered model" rather than "the store failed"."""
    return err.error_code == "RESOURCE_DOES_NOT_EXIST"


def model_versions(cfg: TrackingConfig, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, oldest first: version, tags, aliases, run_id, created (ms since the epoch)."""
    _connect(cfg)
    client = MlflowClient()
    aliases: dict[int, list[str]] = {}
    try:
        registered = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as err:
        if _not_registered(err):
            return []
        raise
    for alias, version in registered.aliases.items():
        aliases.setdefault(int(version), []).append(alias)
    rows = [{"name": name, "version": int(v.version), "tags": dict(v.tags), "aliases": sorted(aliases.get(int(v.version), [])),
             "run_id": v.run_id, "created": int(v.creation_timestamp or 0)} for v in _search_versions(client, name)]
    return sorted(rows, key=lambda row: row["version"])


def alias_version(cfg: TrackingConfig, name: str, alias: str) -> int | None:
    """The version ``alias`` points to; None when the model or the alias does not exist (a store error raises).
    Read from the registered model's alias table: ``get_model_version_by_alias`` reports a missing alias with the
    same error code (INVALID_PARAMETER_VALUE) as a malformed request."""
    _connect(cfg)
    try:
        aliases = MlflowClient().get_registered_model(name).aliases
    except mlflow.exceptions.MlflowException as err:
        if _not_registered(err):
            return None
        raise
    return int(aliases[alias]) if alias in aliases else None


def set_alias(cfg: TrackingConfig, name: str, alias: str, version: int) -> None:
    _connect(cfg)
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def set_version_tags(cfg: TrackingConfig, name: str, version: int, tags: dict[str, str]) -> None:
    _connect(cfg)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def model_tag(cfg: TrackingConfig, name: str, key: str) -> str | None:
    _connect(cfg)
    return MlflowClient().get_registered_model(name).tags.get(key)


def set_model_tag(cfg: TrackingConfig, name: str, key: str, value: str) -> None:
    _connect(cfg)
    MlflowClient().set_registered_model_tag(name, key, value)


def download_version(cfg: TrackingConfig, name: str, version: int, dest: Path,
                     add_files: dict[str, str] | None = None) -> Path:
    """Download version ``version`` of ``name`` into ``dest`` as the exported model folder ``selfsup predict`` and
    ``OnnxClassifier`` load (model.onnx next to tokenizer.json, labels.json and export.json; the image encoder's
    next to classes.json), whichever way it was registered (see ``_exported_files``).

    The folder is built aside, with ``add_files`` (file name: text) written into it, and swapped in whole: a failed
    download leaves the previous ``dest`` as it was."""
    import shutil
    import tempfile

    from selfsup.fileio import replace_dir, staging_dir

    _connect(cfg)
    dest = Path(dest)
    staged = staging_dir(dest)
    try:
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp, _artifact_bars_only_on_a_terminal():
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
            for item in _exported_files(local, f"{name} v{version}"):
                shutil.copy(item, staged / item.name)
        for file_name, text in (add_files or {}).items():
            (staged / file_name).write_text(text)
        replace_dir(staged, dest)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return dest


_MLFLOW_FILES = {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "constraints.txt",
                 "input_example.json", "serving_input_example.json", "registered_model_meta"}


def _exported_files(local: Path, what: str) -> list[Path]:
    """The exported folder's files in a downloaded MLflow model. A text model registered as a pyfunc keeps them
    as its artifact ``MODEL_ARTIFACT``; one registered with the ONNX flavor (every text version registered before
    the pyfunc, and the image encoder) keeps model.onnx (and any external-data file) at the top and the other
    files under ``extra_files/``."""
    from selfsup.registry.kinds import RegistryError
    from selfsup.serve.pyfunc import MODEL_ARTIFACT

    artifacts = mlflow.models.Model.load(str(local)).flavors.get("python_function", {}).get("artifacts") or {}
    if MODEL_ARTIFACT in artifacts:
        files = [p for p in (local / artifacts[MODEL_ARTIFACT]["path"]).iterdir() if p.is_file()]
    else:
        extra = local / "extra_files"
        files = [p for p in local.iterdir() if p.is_file() and p.name not in _MLFLOW_FILES]
        files += [p for p in extra.iterdir() if p.is_file()] if extra.is_dir() else []
    if "model.onnx" not in {p.name for p in files}:
        raise RegistryError(f"{what} has no model.onnx (found {sorted(p.name for p in files)}): it was not "
                            f"registered by `selfsup register`")
    return sorted(files)


def pipeline_run_url(cfg: TrackingConfig, key: str, ui_url: str) -> str | None:
    """The `mlflow ui` address of the pipeline (parent) run with ``pipeline_key == key``, if it exists."""
    experiment_id = _connect(cfg)
    found = MlflowClient().search_runs([experiment_id], filter_string=f"tags.pipeline_key = '{key}' and "
                                                                      "tags.stage = 'pipeline'", max_results=1)
    if not found:
        return None
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{found[0].info.run_id}"


@contextlib.contextmanager
def standalone_run(cfg: TrackingConfig, experiment: str, name: str, tags: dict[str, str]) -> Iterator[MlflowTracker]:
    """A run outside any pipeline (monitoring, routing) in its own experiment, artifacts under ``mlflow/``."""
    from dataclasses import replace

    experiment_id = _connect(replace(cfg, experiment=experiment))  # same artifact root: run ids keep them apart
    client = MlflowClient()
    with store_errors(mlflow.get_tracking_uri(), f"starting the run {name}"):
        run = client.create_run(experiment_id, run_name=name, tags=tags)
    with _ended(run.info.run_id) as tracker:
        yield tracker
