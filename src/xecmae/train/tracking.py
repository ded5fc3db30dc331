"""MLflow, from rank 0 only, and never fatal.

Default store: a SQLite file in the run directory (``<run_dir>/mlflow.db``), so runs never
share a database file (SQLite locking on network filesystems is unreliable) and no server is
needed. ``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` point elsewhere (a server, a shared
database). Any MLflow failure becomes one warning and tracking switches off; training goes on.

Several runs may start on one new SQLite store at once: the store is created (tables, the
experiment) under an ``flock`` on ``<store>.lock``, so none of them finds half-made tables. A run
resumed into another directory keeps its MLflow run: the checkpoint names the store it is in.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000


_SET_HERE: set[str] = set()  # URIs this process gave mlflow.set_tracking_uri, which exports them to the environment


def user_tracking_uri() -> str | None:
    """``$MLFLOW_TRACKING_URI`` as the user set it: not the copy MLflow leaves there after an earlier
    run in this process (which would send the next run into the previous run's store)."""
    value = os.environ.get("MLFLOW_TRACKING_URI")
    return value if value and value not in _SET_HERE else None


def default_tracking_uri(run_dir: Path, configured: str | None) -> str:
    if configured:
        return configured
    if user_tracking_uri():
        return user_tracking_uri()
    return f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve()}"


def resume_uri(configured: str | None, previous: str | None) -> str | None:
    """The store to use: the configured one, else ``$MLFLOW_TRACKING_URI``, else the store of the run
    being resumed (from its checkpoint) while it is still there, else None (the run directory's)."""
    if configured or user_tracking_uri() or not previous:
        return configured
    path = sqlite_path(previous)
    return previous if path is None or path.is_file() else None


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Exclusive use of a SQLite store while it is created or a run is registered; no-op otherwise."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"training.time.weight": "1.0", ...} for MLflow parameters."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


class Tracker:
    """A thin, failure-tolerant MLflow run. Inactive on other ranks, when disabled, or after an error."""

    def __init__(self, run_dir: Path, tracking_uri: str | None, experiment: str, enabled: bool):
        self.run_dir = Path(run_dir)
        self.uri = default_tracking_uri(self.run_dir, tracking_uri)
        self.experiment = experiment
        self.active = enabled
        self.run_id: str | None = None
        self._mlflow = None

    def _call(self, what: str, fn, *args, **kwargs):
        if not self.active:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            log.warning("MLflow %s failed (%s: %s); tracking is off for the rest of this run",
                        what, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            self.active = False
            return None

    def start(self, run_name: str, run_id: str | None = None, resumed_from: str | None = None) -> str | None:
        """Start (or, with ``run_id``, continue) a run; returns its id.

        A ``run_id`` the store does not hold (the run was resumed from elsewhere) starts a new run
        tagged with the checkpoint it resumed from and the previous run's id.
        """
        if not self.active:
            return None
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
        self._call("import", self._import)
        self._call("start", self._start_locked, run_name, run_id, resumed_from)
        if self.run_id:
            log.info("MLflow: run %s in %s", self.run_id, self.uri)
        return self.run_id

    def _import(self):
        import mlflow

        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._mlflow = mlflow

    def _start_locked(self, run_name: str, run_id: str | None, resumed_from: str | None) -> None:
        with store_lock(self.uri):
            self._start(run_name, run_id, resumed_from)

    def _start(self, run_name: str, run_id: str | None, resumed_from: str | None = None) -> None:
        mlflow = self._mlflow
        _SET_HERE.add(self.uri)
        mlflow.set_tracking_uri(self.uri)
        tags = {}
        if run_id is not None and not self._has_run(run_id):
            log.warning("MLflow run %s is not in %s; starting a new run that records where it resumed from",
                        run_id, self.uri)
            tags = {"resumed_from_run": run_id, "resumed_from": str(resumed_from or "")}
            run_id = None
        elif run_id is None and resumed_from:
            tags = {"resumed_from": str(resumed_from)}
        if run_id is None:
            if mlflow.get_experiment_by_name(self.experiment) is None:
                local = self.uri.startswith("sqlite:///") and self.uri.endswith(f"{self.run_dir.name}/mlflow.db")
                location = (self.run_dir / "mlartifacts").resolve().as_uri() if local else None
                mlflow.create_experiment(self.experiment, artifact_location=location)
            mlflow.set_experiment(self.experiment)
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=tags or None)
        self.run_id = run.info.run_id

    def _has_run(self, run_id: str) -> bool:
        try:
            self._mlflow.tracking.MlflowClient(self.uri).get_run(run_id)
        except Exception:
            return False
        return True

    def log_params(self, params: Mapping[str, str]) -> None:
        self._call("log_params", lambda: self._mlflow.log_params(dict(params)))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        clean = {k.replace("@", "_"): float(v) for k, v in metrics.items()}
        self._call("log_metrics", lambda: self._mlflow.log_metrics(clean, step=step))

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        if Path(path).exists():
            self._call("log_artifact", lambda: self._mlflow.log_artifact(str(path), artifact_path=folder))

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self._call("end_run", lambda: self._mlflow.end_run(status=status))
