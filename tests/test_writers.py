"""ROOT writers are complete or gone: one close-or-abort for the tree writer and the prediction writer."""

import numpy as np
import pytest

from xecmae.data.atomic import CloseOrAbort
from xecmae.data.predictions import PredictionWriter
from xecmae.data.rootio import TreeWriter
from xecmae.detector.geometry import N_SENSORS
from xecmae.detector.normalize import Normalizer


class Crash(Exception):
    pass


def prediction_writer(path):
    writer = PredictionWriter(path, ("npho",), Normalizer())
    n = 3
    writer.add(event=np.arange(n), run=np.zeros(n), x=np.zeros((n, N_SENSORS, 2), np.float32),
               valid=np.ones((n, N_SENSORS, 2), bool), hidden=np.zeros((n, N_SENSORS), bool),
               pred=np.zeros((n, N_SENSORS, 1), np.float32))
    return writer


def tree_writer(path):
    writer = TreeWriter(path, "tree")
    writer.extend({"x": np.arange(3, dtype=np.int64)})
    return writer


WRITERS = [prediction_writer, tree_writer]


def test_both_writers_share_the_one_close_or_abort():
    for cls in (TreeWriter, PredictionWriter):
        assert issubclass(cls, CloseOrAbort)
        assert not {"__enter__", "__exit__", "close"} & set(vars(cls)), cls


@pytest.mark.parametrize("make", WRITERS)
def test_a_with_block_keeps_a_complete_file_and_removes_a_failed_one(tmp_path, make):
    with make(tmp_path / "ok.root"):
        pass
    with pytest.raises(Crash), make(tmp_path / "bad.root"):
        raise Crash
    assert [p.name for p in tmp_path.iterdir()] == ["ok.root"]


@pytest.mark.parametrize("in_with", [False, True])
def test_a_prediction_file_whose_metadata_fails_leaves_no_partial_file(tmp_path, monkeypatch, in_with):
    """The bug: the prediction writer's own close left ``.NAME.partial-PID`` behind when the metadata failed."""
    def fail(self, values, name="metadata"):
        raise Crash

    writer = prediction_writer(tmp_path / "p.root")
    monkeypatch.setattr(TreeWriter, "write_metadata", fail)
    with pytest.raises(Crash):
        if in_with:
            with writer:
                pass
        else:
            writer.close()
    assert list(tmp_path.iterdir()) == []
