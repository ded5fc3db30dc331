"""``xecmae show``: one event drawn to a PNG; clear one-line errors."""

from __future__ import annotations

import pytest

from xecmae import simulate as sim
from xecmae.cli import main as cli_main


@pytest.fixture(scope="module")
def events_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("show") / "events.root"
    sim.write_root(path, 8, sim.EventGenerator(seed=4, dead_fraction=0.03), progress=False)
    return path


def test_show_writes_a_png(events_file, tmp_path, capsys):
    out = tmp_path / "event.png"
    assert cli_main(["show", str(events_file), "--event", "5", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--event", "8"], "out of range"),
    (["--event", "-1"], "out of range"),
    (["--tree", "nope"], "no tree named 'nope'"),
    (["--npho-branch", "nope"], "no branch 'nope'"),
])
def test_show_errors_are_one_line(events_file, tmp_path, capsys, args, message):
    assert cli_main(["show", str(events_file), *args, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x.png").exists()


def test_show_rejects_a_file_that_is_not_root(tmp_path, capsys):
    text = tmp_path / "notes.root"
    text.write_text("not a ROOT file\n")
    assert cli_main(["show", str(text), "--out", str(tmp_path / "x.png")]) == 2
    assert "cannot be opened as a ROOT file" in capsys.readouterr().err
    assert cli_main(["show", str(tmp_path / "missing.root")]) == 2
    assert "no such file" in capsys.readouterr().err
