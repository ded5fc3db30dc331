"""The data pipeline's fast paths: normalization into batch buffers, bad-value counts, reused read buffers,
recycled shared memory."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import uproot

from xecmae.data.fastnorm import BLOCK_EVENTS, Scratch, count_bad, normalize_into
from xecmae.data.rootio import ReadBuffers, read_range, write_tree
from xecmae.data.shared import SharedBuffers, mapped_inodes, shared_empty, storage_inode
from xecmae.detector.geometry import N_SENSORS
from xecmae.detector.normalize import NPHO_SCHEMES, Normalizer


def raw_events(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw events with every kind of value the normalization must get right."""
    rng = np.random.default_rng(seed)
    npho = (rng.exponential(1.0, (n, N_SENSORS)) ** 2 * 300 + rng.normal(0, 6, (n, N_SENSORS))).astype(np.float32)
    time = rng.normal(30e-9, 8e-9, (n, N_SENSORS)).astype(np.float32)
    dead = rng.random((n, N_SENSORS)) < 0.02
    npho[dead], time[dead] = 1e10, 1e10
    npho[0, :6] = [np.nan, np.inf, -np.inf, -1e10, -5000.0, -999.5]  # broken, dead, below the log1p domain
    time[1, :4] = [np.nan, np.inf, -np.inf, -1e10]
    npho[1, :4] = 500.0  # bright, so only the time makes them invalid
    return npho, time


@pytest.mark.parametrize("scheme", NPHO_SCHEMES)
def test_normalize_into_equals_the_normalizer_bit_for_bit(scheme):
    normalizer = Normalizer(npho_scheme=scheme)
    npho, time = raw_events(2 * BLOCK_EVENTS + 5)  # more than one scratch block, with a ragged end
    x, valid = np.full((len(npho), N_SENSORS, 2), 7.0, np.float32), np.zeros((len(npho), N_SENSORS, 2), bool)
    npho_before, time_before = npho.copy(), time.copy()
    normalize_into(normalizer, npho, time, x, valid, Scratch(BLOCK_EVENTS))
    x_ref, valid_ref = normalizer(torch.from_numpy(npho), torch.from_numpy(time))
    assert torch.equal(torch.from_numpy(valid), valid_ref)
    assert np.array_equal(x.view(np.int32), x_ref.numpy().view(np.int32))  # every bit, sentinels included
    assert np.array_equal(npho, npho_before, equal_nan=True) and np.array_equal(time, time_before, equal_nan=True)
    assert not valid[0, :4, 0].any() and not valid[1, :4, 1].any() and valid[1, :4, 0].all()


def test_count_bad_counts_dead_and_broken_values():
    npho, time = raw_events(40)
    expected = [np.count_nonzero(~(np.abs(npho) <= 9e9)), np.count_nonzero(~(np.abs(time) <= 9e9)),
                np.count_nonzero(~np.isfinite(npho)) + np.count_nonzero(~np.isfinite(time))]
    assert count_bad(npho, time).tolist() == expected
    clean_npho, clean_time = npho[2:], time[2:]  # only the 1e10 markers: the one-compare path
    assert count_bad(clean_npho, clean_time).tolist() == [np.count_nonzero(clean_npho > 9e9),
                                                          np.count_nonzero(clean_time > 9e9), 0]
    negative = clean_npho.copy()
    negative[3, 3] = -1e10
    assert count_bad(negative, clean_time)[0] == np.count_nonzero(clean_npho > 9e9) + 1
    rolled = count_bad(np.roll(npho, -2, axis=0), np.roll(time, -2, axis=0))  # broken rows in the last block
    assert len(npho) > BLOCK_EVENTS and rolled.tolist() == expected


# --- reused read buffers ------------------------------------------------------------------------------
def test_read_buffers_are_reused_only_when_nothing_refers_to_them():
    buffers = ReadBuffers()
    first = buffers.take("npho", 10, (N_SENSORS,), np.float32)
    rows = first[3:5]  # a view of a view still holds the buffer
    del first
    second = buffers.take("npho", 10, (N_SENSORS,), np.float32)
    assert not np.shares_memory(rows, second) and len(buffers) == 2
    del rows
    third = buffers.take("npho", 8, (N_SENSORS,), np.float32)  # the first buffer is free again
    assert third.shape == (8, N_SENSORS) and not np.shares_memory(third, second) and len(buffers) == 2
    del third
    fourth = buffers.take("npho", 11, (N_SENSORS,), np.float32)  # none is big enough: a free one is replaced
    assert fourth.shape == (11, N_SENSORS) and len(buffers) == 2
    assert buffers.take("time", 4, (N_SENSORS,), np.float32).shape == (4, N_SENSORS) and len(buffers) == 3


def test_read_range_into_reused_buffers_equals_uproot(tmp_path):
    npho, time = raw_events(60, seed=3)
    path = str(tmp_path / "events.root")
    chunks = [{"npho": npho[i:i + 20], "relative_time": time[i:i + 20].astype(np.float64),  # a double branch
               "event": np.arange(i, i + 20, dtype=np.int64)} for i in range(0, 60, 20)]
    write_tree(path, chunks)
    expected = uproot.open(path)["tree"].arrays(["npho", "relative_time", "event"], library="np")
    buffers, held, start = ReadBuffers(), [], 0
    for arrays in read_range(path, "tree", ["npho", "relative_time", "event"], 0, 60, 20, buffers=buffers,
                             into=["npho", "relative_time"]):
        stop = start + len(arrays["event"])
        assert arrays["npho"].dtype == arrays["relative_time"].dtype == np.float32
        np.testing.assert_array_equal(arrays["npho"], expected["npho"][start:stop])
        np.testing.assert_array_equal(arrays["relative_time"], expected["relative_time"][start:stop].astype(np.float32))
        np.testing.assert_array_equal(arrays["event"], expected["event"][start:stop])
        if start == 0:
            held = arrays["npho"]  # kept by the caller: never overwritten
        start = stop
        del arrays
    assert start == 60 and len(buffers) == 3  # npho: the held buffer and one reused twice; time: one
    np.testing.assert_array_equal(held, expected["npho"][:20])


# --- recycled shared memory ---------------------------------------------------------------------------
SPECS = [((4, 3), torch.float32), ((4, 3), torch.bool)]


def test_shared_buffers_wait_for_the_lag_and_for_the_consumer_to_let_go(monkeypatch):
    mapped: set[int] = set()
    monkeypatch.setattr("xecmae.data.shared.mapped_inodes", lambda pid: mapped)
    buffers = SharedBuffers(consumer=1, received_after=1)  # recyclable 2 batches after hand-over
    first = buffers.take(SPECS)
    second = buffers.take(SPECS)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(first, second, strict=True))  # too recent
    mapped.update(buffers.handed[0][2])  # the consumer still holds the first batch
    third = buffers.take(SPECS)
    assert buffers.recycled == 0 and third[0].data_ptr() != first[0].data_ptr()
    mapped.clear()  # ... and now it has let go
    fourth = buffers.take(SPECS)
    assert buffers.recycled == 1 and [t.data_ptr() for t in fourth] == [t.data_ptr() for t in first]
    other = buffers.take([((2, 3), torch.float32), ((2, 3), torch.bool)])  # a smaller tail batch: new memory
    assert other[0].data_ptr() not in {t[0].data_ptr() for _, t, _ in list(buffers.handed)[:-1]}


def test_shared_buffers_never_recycle_when_the_consumer_cannot_be_read(monkeypatch):
    monkeypatch.setattr("xecmae.data.shared.mapped_inodes", lambda pid: None)
    buffers = SharedBuffers(consumer=1, received_after=0)
    for _ in range(6):
        buffers.take(SPECS)
    assert buffers.recycled == 0


def test_mapped_inodes_sees_a_shared_tensor_while_this_process_holds_it():
    tensor = shared_empty((1000,), torch.float32)
    inode = storage_inode(tensor)
    assert inode in mapped_inodes(os.getpid())
    del tensor
    assert inode not in mapped_inodes(os.getpid())
