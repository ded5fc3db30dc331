"""The fault suite: one regression test per way a hostile user lost data or got a traceback.

Each test is named after its fault and fails without the fix. A tiny model on a few dozen
simulated events; commands run in-process through :func:`xecmae.cli.main` (a traceback there is
an exception that fails the test), subprocesses only where a second live process is the point.
The test user is root, so read-only places are made by injecting ``OSError(EROFS)`` into every
open of a path inside the directory (:func:`read_only`), or by a path under a regular file.
"""

from __future__ import annotations

import builtins
import errno
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import uproot

from conftest import tiny_config
from xecmae.cli import main as cli
from xecmae.data.atomic import partial_name
from xecmae.data.rootio import write_tree
from xecmae.errors import UserError
from xecmae.train import loop, policy
from xecmae.train.checkpoint import load_checkpoint
from xecmae.train.pretrain import pretrain

N = 4760
LAST, BEST = "mae_checkpoint_last.pth", "mae_checkpoint_best.pth"


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, str]:
    """32 training events (2 batches of 16) and 16 validation events."""
    from xecmae.simulate import EventGenerator, write_root

    root = tmp_path_factory.mktemp("faults")
    write_root(root / "train.root", 32, EventGenerator(seed=21), progress=False)
    write_root(root / "val.root", 16, EventGenerator(seed=22), progress=False)
    return {"train": str(root / "train.root"), "val": str(root / "val.root"), "dir": str(root)}


def config(small, tmp_path, **sections):
    """Two steps of 16 events, one epoch, no validation unless asked for."""
    sections.setdefault("data", {})
    sections["data"] = {"batch_size": 16, "chunksize": 32, "shuffle_buffer": 0, "val_path": None} | sections["data"]
    sections["training"] = {"epochs": 1} | sections.get("training", {})
    return tiny_config(small, tmp_path, **sections)


@pytest.fixture(scope="module")
def trained(small, tmp_path_factory) -> Path:
    """The last checkpoint of a finished one-epoch tiny run."""
    run = pretrain(config(small, tmp_path_factory.mktemp("trained")))
    return run / LAST


@pytest.fixture
def steps(monkeypatch) -> list[int]:
    """Counts training steps, to show a refusal came before any compute."""
    calls: list[int] = []
    real = loop.Trainer.train_step

    def counted(self, batch):
        calls.append(self.state.batch)
        return real(self, batch)

    monkeypatch.setattr(loop.Trainer, "train_step", counted)
    return calls


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``xecmae ARGV`` in this process: exit status and stderr; the logging set-up it makes is undone."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    capsys.readouterr()
    try:
        rc = cli(argv)
    finally:
        root.handlers[:], root.level = handlers, level
    return rc, capsys.readouterr().err


def one_line_error(rc: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def pretrain_argv(small, save_dir: Path, run_name: str, *extra: str) -> list[str]:
    return ["pretrain", "--train_root", small["train"], "--val_root", small["val"], "--size", "tiny",
            "--batch_size", "16", "--epochs", "1", "--num_workers", "0", "--chunksize", "32",
            "--save_dir", str(save_dir), "--run_name", run_name, "--mlflow.enabled", "false",
            "--save_predictions", "false", *extra]


def read_only(monkeypatch, directory: Path) -> None:
    """Every open for writing of a path inside ``directory`` fails with EROFS, as on a read-only mount."""
    inside = str(directory.resolve())
    real_open, real_os_open = builtins.open, os.open

    def guarded(path) -> None:
        if isinstance(path, str | os.PathLike) and os.path.abspath(os.fspath(path)).startswith(inside):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def fake_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            guarded(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            guarded(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_events(path: Path, npho: np.ndarray, time_: np.ndarray | None = None) -> str:
    time_ = np.zeros_like(npho) if time_ is None else time_
    n = len(npho)
    write_tree(str(path), [{"npho": npho.astype(np.float32), "relative_time": time_.astype(np.float32),
                            "run": np.zeros(n, np.int64), "event": np.arange(n, dtype=np.int64)}])
    return str(path)


# --- 1 ---------------------------------------------------------------------------------------------
def test_fault01_existing_run_is_not_overwritten(small, tmp_path, steps):
    run = pretrain(config(small, tmp_path, checkpoint={"run_name": "R"}))
    before = load_checkpoint(run / LAST)
    steps.clear()
    with pytest.raises(UserError, match=r"already holds .* --resume_from .* --overwrite"):
        pretrain(config(small, tmp_path, checkpoint={"run_name": "R"}))
    assert steps == [] and load_checkpoint(run / LAST)["step"] == before["step"] == 2

    # a second live run on the same directory is refused while the first holds it
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        from xecmae.train.rundir import lock
        lock(sys.argv[1])
        print("locked", flush=True)
        sys.stdin.read()
        """), str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"in use by another live run \(pid {holder.pid}\)"):
            pretrain(config(small, tmp_path, checkpoint={"run_name": "R", "overwrite": True}))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert steps == []

    # starting over is explicit, and the old run's checkpoints do not stay beside the new ones
    (run / "mae_encoder_epoch_7.pth").write_bytes(b"old")
    pretrain(config(small, tmp_path, checkpoint={"run_name": "R", "overwrite": True}))
    assert not (run / "mae_encoder_epoch_7.pth").exists() and load_checkpoint(run / LAST)["step"] == 2


# --- 2 ---------------------------------------------------------------------------------------------
def test_fault02_a_bad_validation_file_is_refused_before_the_first_step(small, tmp_path, steps):
    wrong = tmp_path / "short.root"
    write_tree(str(wrong), [{"npho": np.ones((16, 100), np.float32), "relative_time": np.zeros((16, 100), np.float32)}])
    truncated = tmp_path / "truncated.root"
    data = Path(small["val"]).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for bad, message in ((wrong, "wrong length"), (truncated, "truncated")):
        with pytest.raises(UserError, match=message):
            pretrain(config(small, tmp_path, data={"val_path": str(bad)}, checkpoint={"run_name": bad.stem}))
        assert steps == [], bad


# --- 3 ---------------------------------------------------------------------------------------------
def test_fault03_concurrent_runs_share_a_new_mlflow_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    script = textwrap.dedent("""
        import logging, os, sys, time
        logging.basicConfig(level=logging.WARNING)
        from xecmae.train.tracking import Tracker
        tracker = Tracker(sys.argv[1], sys.argv[2], "concurrent", True)
        tracker._import()
        print("ready", flush=True)
        while not os.path.exists(sys.argv[3]):
            time.sleep(0.002)
        print("run", tracker.start("r"), flush=True)
        tracker.end()
        """)
    go = tmp_path / "go"  # created once every process has imported MLflow: then all start at once
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"run{i}"), uri, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(3)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 3
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    ids = [out.strip().rsplit(" ", 1)[-1] for out, _ in outs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outs]
    assert not any("tracking is off" in err for _, err in outs), [err[-1500:] for _, err in outs]
    assert "None" not in ids and len(set(ids)) == 3, ids


# --- 4 ---------------------------------------------------------------------------------------------
def test_fault04_unwritable_or_full_output_is_one_line_and_keeps_the_last_checkpoint(
        small, trained, tmp_path, steps, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="cannot write to"):
        pretrain(config(small, tmp_path, checkpoint={"save_dir": str(blocker / "runs")}))
    with pytest.raises(UserError, match=r"checkpoint\.save_path: cannot write to"):
        pretrain(config(small, tmp_path, checkpoint={"save_path": str(blocker / "best.pth"), "run_name": "sp"}))
    assert steps == []

    mount = tmp_path / "ro"
    mount.mkdir()
    with monkeypatch.context() as m:
        read_only(m, mount)
        with pytest.raises(UserError, match="Read-only file system"):
            pretrain(config(small, mount, checkpoint={"run_name": "ro"}))
        assert steps == []
        filled = []
        m.setattr("xecmae.apps.fill.fill_chunk", lambda *a, **k: filled.append(1))
        rc, err = run_cli(["predict", "--checkpoint", str(trained), "--input", small["val"],
                           "--output", str(mount / "out.root")], capsys)
        one_line_error(rc, err, "--output", "Read-only file system")
        assert filled == []

    # the disk fills at the second checkpoint write: one line, the first checkpoint kept, no partial file
    real_save, writes = torch.save, []

    def full_disk(obj, path, *args, **kwargs):
        writes.append(path)
        if len(writes) == 2:
            Path(path).write_bytes(b"\0" * 100)
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 128")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"cannot write checkpoint .* the previous checkpoint there is kept"):
        pretrain(config(small, tmp_path, checkpoint={"run_name": "full", "save_every_steps": 1}))
    assert load_checkpoint(tmp_path / "full" / LAST)["step"] == 1
    assert [p.name for p in (tmp_path / "full").iterdir() if "partial" in p.name or p.suffix == ".tmp"] == []


# --- 5 ---------------------------------------------------------------------------------------------
def test_fault05_predict_refuses_bad_input_in_one_line(small, trained, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty.root"
    types = {"npho": np.dtype((np.float32, (N,))), "relative_time": np.dtype((np.float32, (N,)))}
    write_tree(str(empty), [], types=types)
    corrupt = tmp_path / "corrupt.root"
    data = bytearray(Path(small["train"]).read_bytes())
    with uproot.open(small["train"]) as f:  # damage the header of the time basket, in the middle of the file
        seek = int(f["tree"]["relative_time"].member("fBasketSeek")[0])
    data[seek: seek + 64] = np.random.default_rng(0).bytes(64)
    corrupt.write_bytes(bytes(data))
    out = tmp_path / "out.root"
    base = ["predict", "--checkpoint", str(trained)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cases = [
        (["--input", str(empty), "--output", str(out)], "no entries"),
        (["--input", str(corrupt), "--output", str(out)], "corrupt.root"),
        (["--input", small["val"], "--output", str(out), "--batch", "0"], "--batch"),
        (["--input", small["val"], "--output", str(out), "--chunk", "-1"], "--chunk"),
        (["--input", small["val"], "--output", str(tmp_path)], "is a directory"),
        (["--input", small["val"], "--output", str(out), "--device", "cuda"], "no GPU"),
    ]
    for flags, needle in cases:
        rc, err = run_cli(base + flags, capsys)
        one_line_error(rc, err, needle)
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --- 6 ---------------------------------------------------------------------------------------------
def test_fault06_an_empty_or_damaged_checkpoint_is_one_line(small, trained, tmp_path, capsys):
    whole = trained.read_bytes()
    damaged = {"empty.pth": b"", "truncated.pth": whole[: len(whole) // 2],
               "random.pth": np.random.default_rng(1).bytes(4096)}
    for name, content in damaged.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        rc, err = run_cli(["predict", "--checkpoint", str(bad), "--input", small["val"],
                           "--output", str(tmp_path / "out.root")], capsys)
        one_line_error(rc, err, str(bad))
        rc, err = run_cli(pretrain_argv(small, tmp_path, f"p_{bad.stem}", "--resume_from", str(bad)), capsys)
        one_line_error(rc, err, str(bad))
        argv = pretrain_argv(small, tmp_path, f"f_{bad.stem}", "--resume_from", str(bad))
        argv = ["finetune", *[a for a in argv[1:] if a not in ("--save_predictions", "false")]]
        rc, err = run_cli(argv, capsys)
        one_line_error(rc, err, str(bad))
    assert "empty (0 bytes)" in run_cli(pretrain_argv(small, tmp_path, "e", "--resume_from",
                                                      str(tmp_path / "empty.pth")), capsys)[1]


# --- 7 ---------------------------------------------------------------------------------------------
def test_fault07_resume_with_another_model_or_normalisation_is_refused_in_one_line(small, trained, tmp_path, steps):
    with pytest.raises(UserError) as info:
        pretrain(config(small, tmp_path, model={"size": "small"},
                        checkpoint={"run_name": "bigger", "resume_from": str(trained)}))
    message = str(info.value)
    assert "\n" not in message and "model.size: checkpoint 'tiny', configuration 'small'" in message
    assert re.search(r"model\.encoder_dim: checkpoint \d+, configuration \d+", message)
    with pytest.raises(UserError) as info:
        pretrain(config(small, tmp_path, normalization={"npho_scale": 500.0, "npho_scheme": "sqrt"},
                        checkpoint={"run_name": "renormed", "resume_from": str(trained)}))
    message = str(info.value)
    assert "\n" not in message
    assert "normalization.npho_scale: checkpoint 1000.0, configuration 500.0" in message
    assert "normalization.npho_scheme: checkpoint 'log1p', configuration 'sqrt'" in message
    assert steps == []


# --- 8 ---------------------------------------------------------------------------------------------
def test_fault08_a_mid_epoch_resume_reports_the_uninterrupted_epoch_loss(small, tmp_path):
    straight = pretrain(config(small, tmp_path, checkpoint={"run_name": "straight"}))
    cut = pretrain(config(small, tmp_path, checkpoint={"run_name": "cut"}, training={"max_steps": 1}))
    assert load_checkpoint(cut / LAST)["epoch_batches"] == 1
    pretrain(config(small, tmp_path, checkpoint={"run_name": "cut", "resume_from": str(cut / LAST)}))
    a = load_checkpoint(straight / LAST)["history"][0]
    b = load_checkpoint(cut / LAST)["history"][0]
    for key in ("train/total_loss", "train/loss_npho", "train/actual_mask_ratio"):
        assert b[key] == pytest.approx(a[key], rel=1e-5), key


# --- 9 ---------------------------------------------------------------------------------------------
def test_fault09_a_run_resumed_into_a_new_directory_stays_tracked(small, tmp_path, caplog, monkeypatch):
    tracked = {"enabled": True, "experiment": "faults"}
    first = pretrain(config(small, tmp_path, checkpoint={"run_name": "a"}, training={"max_steps": 1}, mlflow=tracked))
    run_id = load_checkpoint(first / LAST)["mlflow_run_id"]
    assert run_id
    # as in a new process: MLflow exports the last store it was given as $MLFLOW_TRACKING_URI
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    caplog.clear()
    second = pretrain(config(small, tmp_path, checkpoint={"run_name": "b", "resume_from": str(first / LAST)},
                             mlflow=tracked))
    assert not any("tracking is off" in r.getMessage() for r in caplog.records)
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{first / 'mlflow.db'}")
    assert load_checkpoint(second / LAST)["mlflow_run_id"] == run_id
    assert [m.step for m in client.get_metric_history(run_id, "train/total_loss")] == [1]
    assert client.get_run(run_id).info.status == "FINISHED"


# --- 10 --------------------------------------------------------------------------------------------
class KilledBetweenWrites(BaseException):
    """Stands for a kill -9 between two checkpoint writes."""


def test_fault10_best_is_written_before_last(small, tmp_path, monkeypatch):
    real = policy.save_checkpoint

    def killed_at_last(payload, path):
        if Path(path).name == LAST:
            raise KilledBetweenWrites
        return real(payload, path)

    monkeypatch.setattr(policy, "save_checkpoint", killed_at_last)
    with pytest.raises(KilledBetweenWrites):
        pretrain(config(small, tmp_path))
    best = load_checkpoint(tmp_path / "run" / BEST)
    assert best["epoch"] == best["best_epoch"] == 1


# --- 11 --------------------------------------------------------------------------------------------
def test_fault11_temporary_files_are_named_and_cleaned(small, trained, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / f".{LAST}.partial-{dead_pid()}", run / f".{LAST}.k3j_2a.tmp"]
    live = run / f".{BEST}.partial-1"  # a writer that is still running (pid 1 always is)
    for path in [*stale, live]:
        path.write_bytes(b"\0" * 1000)
    real_save, names = torch.save, []

    def recording(obj, path, *args, **kwargs):
        names.append(Path(path).name)
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", recording)
    pretrain(config(small, tmp_path))
    assert not any(p.exists() for p in stale) and live.exists()
    assert f".{LAST}.partial-{os.getpid()}" in names
    monkeypatch.setattr(torch, "save", real_save)

    out = tmp_path / "filled.root"
    left = tmp_path / f".filled.root.partial-{dead_pid()}"
    left.write_bytes(b"\0" * 1000)
    rc, err = run_cli(["predict", "--checkpoint", str(trained), "--input", small["val"], "--output", str(out)], capsys)
    assert rc == 0, err[-2000:]
    assert out.is_file() and not left.exists()
    assert partial_name(out).name == f".filled.root.partial-{os.getpid()}"


# --- 12 --------------------------------------------------------------------------------------------
def test_fault12_all_invalid_input_warns_and_is_refused(small, tmp_path, caplog):
    dead = write_events(tmp_path / "dead.root", np.full((16, N), 1e10))
    nan = write_events(tmp_path / "nan.root", np.full((16, N), np.nan))
    for path in (dead, nan):
        caplog.clear()
        with pytest.raises(UserError, match="no event of this epoch has a single valid sensor"):
            pretrain(config(small, tmp_path, data={"train_path": path, "val_path": None},
                            checkpoint={"run_name": Path(path).stem}))
        warnings = [r.getMessage() for r in caplog.records if "every sensor of these" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert not (tmp_path / Path(path).stem / LAST).exists()
