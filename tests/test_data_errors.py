"""Bad inputs: one clear line naming the file and the problem, no traceback from inside uproot."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import awkward as ak
import numpy as np
import pytest
import uproot
from torch.utils.data import DataLoader

from test_data_stream import fake_events, stream, write_events
from xecmae.cli import main
from xecmae.data.rootio import DataError, write_tree
from xecmae.data.stream import XECStream
from xecmae.detector.geometry import N_SENSORS
from xecmae.errors import UserError


@pytest.fixture
def cli(capsys):
    """Run ``xecmae ...`` in process; returns (status, stdout, stderr). Logging is restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*argv: str) -> tuple[int, str, str]:
        status = main(list(argv))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


def _assert_one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "File \"" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _stream(path, **kwargs) -> XECStream:
    options = {"batch_size": 8, "chunksize": 32, "drop_last": True, "num_threads": 1, **kwargs}
    return stream(path if isinstance(path, list) else str(path), **options)


# --- one file per problem ---------------------------------------------------------------------------
def _missing_tree(path):
    events = fake_events(20)
    write_tree(str(path), [events], tree_name="events")


def _missing_branch(path):
    events = fake_events(20)
    del events["relative_time"]
    write_tree(str(path), [events])


def _wrong_length(path):
    events = fake_events(20)
    events["npho"] = events["npho"][:, :4000]
    write_tree(str(path), [events])


def _jagged(path):
    events = fake_events(20)
    with uproot.recreate(str(path)) as file:
        file.mktree("tree", {"npho": "var * float32", "relative_time": np.dtype((np.float32, (N_SENSORS,)))})
        file["tree"].extend({"npho": ak.Array([row[:100] for row in events["npho"]]),
                             "relative_time": events["relative_time"]})


def _truncated(path):
    write_events(path, 60)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _text(path):
    path.write_text("run 1: these are my notes\n")


CASES = {
    "missing_tree.root": (_missing_tree, ["no tree named 'tree'", "trees present: events"]),
    "missing_branch.root": (_missing_branch, ["no branch 'relative_time'", "branches present: npho, run, event"]),
    "wrong_length.root": (_wrong_length, ["branch 'npho' has the wrong length", "4000 values per event",
                                          "expected 4760 values"]),
    "jagged.root": (_jagged, ["branch 'npho'", "not a fixed-size array"]),
    "truncated.root": (_truncated, ["truncated ROOT file"]),
    "notes.txt": (_text, ["not a ROOT file", "not a list of paths"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_is_one_clear_line_from_inspect_and_the_stream(tmp_path, cli, name):
    make, needles = CASES[name]
    path = tmp_path / name
    make(path)
    status, _, err = cli("inspect", str(path))
    assert status == 2
    _assert_one_line(err, str(path), *needles)
    with pytest.raises(UserError) as info:
        _stream(path)
    assert str(path) in str(info.value) and all(needle in str(info.value) for needle in needles)


@pytest.mark.parametrize("spec, needle", [("gone.root", "no such file or directory"),
                                          ("nothing_*.root", "the pattern matches no file")])
def test_missing_path_and_empty_glob(tmp_path, cli, spec, needle):
    status, _, err = cli("inspect", str(tmp_path / spec))
    assert status == 2
    _assert_one_line(err, str(tmp_path / spec), needle)


def test_real_command_line_prints_one_line_and_status_2(tmp_path):
    path = tmp_path / "truncated.root"
    _truncated(path)
    run = subprocess.run([sys.executable, "-m", "xecmae.cli", "inspect", str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120)
    assert run.returncode == 2
    _assert_one_line(run.stderr, str(path), "truncated ROOT file")


def test_inspect_reports_entries_branches_and_invalid_fractions_per_face(tmp_path, cli):
    path = write_events(tmp_path / "good.root", 30)
    status, out, err = cli("inspect", path)
    assert status == 0 and not err
    assert "30 entries" in out and "npho" in out and "float[4760]" in out and "energyTruth" in out
    for face in ("inner", "us", "ds", "outer", "top", "bottom"):
        assert any(line.split()[0] == face for line in out.splitlines() if line.strip())
    assert "NaN/inf values:" in out


def test_unreadable_basket_in_a_worker_is_one_line_in_the_main_process(tmp_path):
    path = tmp_path / "corrupt.root"
    write_events(path, 64, chunk=32)
    with uproot.open(str(path)) as file:
        seek = int(file["tree"]["npho"].member("fBasketSeek")[1])
    data = bytearray(path.read_bytes())
    data[seek: seek + 64] = bytes(range(64))  # the key header of the second npho basket
    path.write_bytes(bytes(data))
    dataset = _stream(path, num_workers=1)  # the scan reads no baskets: the error comes from the worker
    with pytest.raises(DataError) as info:
        list(DataLoader(dataset, batch_size=None, num_workers=1))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert str(path) in message and "cannot read entries 32-64" in message


# --- invalid values and empty files ----------------------------------------------------------------------
def test_nan_inf_and_dead_values_become_invalid_counted_once_per_chunk(tmp_path, caplog):
    path = write_events(tmp_path / "bad_values.root", 100, chunk=20)  # baskets of 20 events
    caplog.set_level(logging.DEBUG, logger="xecmae.data.stream")
    batches = list(_stream(path, drop_last=False, chunksize=40))
    summaries = [r.getMessage() for r in caplog.records if "NaN/inf values" in r.getMessage()]
    assert len(summaries) == 3, summaries  # chunks of 40, 40, 20 events: one line each, not one per sensor
    assert all(r.levelno == logging.WARNING for r in caplog.records if "NaN/inf" in r.getMessage())
    raw = fake_events(40)  # the file's first 40 events (NaN and inf sit in the same sensors in every event)
    nonfinite = int(np.isnan(raw["npho"]).sum() + np.isinf(raw["relative_time"]).sum())
    bad_npho = int((~np.isfinite(raw["npho"]) | (np.abs(raw["npho"]) > 9e9)).sum())
    bad_time = int((~np.isfinite(raw["relative_time"]) | (np.abs(raw["relative_time"]) > 9e9)).sum())
    assert summaries[0].startswith("bad_values.root[0:40]: 40 events; ")
    assert f"npho {bad_npho} " in summaries[0] and f"time {bad_time} " in summaries[0]
    assert summaries[0].endswith(f"NaN/inf values {nonfinite}")
    valid = np.concatenate([b["valid"].numpy() for b in batches])
    assert not valid[:, ::97, :].any()  # 1e10
    assert not valid[:, 5::301, :].any()  # NaN npho: npho and time invalid
    assert not valid[:, 7::401, 1].any()  # inf time


def test_zero_entry_file_is_skipped_with_a_warning(tmp_path, caplog):
    empty = tmp_path / "a_empty.root"
    write_tree(str(empty), [], types={"npho": np.dtype((np.float32, (N_SENSORS,))),
                                      "relative_time": np.dtype((np.float32, (N_SENSORS,)))})
    good = write_events(tmp_path / "b_good.root", 24)
    caplog.set_level(logging.WARNING, logger="xecmae.data.stream")
    dataset = _stream([str(empty), good], drop_last=False)
    assert sum(len(b["event"]) for b in dataset) == 24
    assert any(str(empty) in r.getMessage() and "no entries" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match="no events"):
        _stream(str(empty))
