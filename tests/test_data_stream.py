"""The streaming dataset: exactly-once sharding, shuffling, normalization, truth alignment, even steps."""

from __future__ import annotations

import logging
import time
import weakref

import numpy as np
import pytest
import torch
import uproot
from torch.utils.data import DataLoader

from xecmae.config import MAEConfig
from xecmae.data.loaders import make_loader
from xecmae.data.plan import Piece, deal, share_sizes, split_pieces, steps_per_epoch, worker_batches
from xecmae.data.pool import EventPool
from xecmae.data.rootio import TRUTH_SHAPES, read_steps, write_tree
from xecmae.data.shared import storage_inode
from xecmae.data.spec import StreamSpec
from xecmae.data.stream import XECStream, _read_ahead
from xecmae.detector.geometry import N_SENSORS
from xecmae.detector.normalize import Normalizer
from xecmae.runtime import map_large_blocks

SIZES = (130, 70, 211)  # uneven files: 411 events


def fake_events(n: int, first_event: int = 0, seed: int = 0, run: int = 7) -> dict[str, np.ndarray]:
    """Raw events with every kind of value: bright, dim, slightly negative, dead (1e10), NaN, inf."""
    rng = np.random.default_rng(seed)
    npho = rng.exponential(300.0, (n, N_SENSORS)).astype(np.float32) - 10
    time = rng.normal(3e-8, 1e-8, (n, N_SENSORS)).astype(np.float32)
    npho[:, ::97] = 1e10
    time[:, ::97] = 1e10
    npho[:, 5::301] = np.nan
    time[:, 7::401] = np.inf
    events = {"npho": npho, "relative_time": time, "run": np.full(n, run, np.int32),
              "event": np.arange(first_event, first_event + n, dtype=np.int32)}
    for name, shape in TRUTH_SHAPES.items():
        # truth tied to the event number so alignment can be checked exactly
        base = events["event"].astype(np.float32).reshape(n, *([1] * len(shape)))
        events[name] = (base + np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) / 10
                        ).astype(np.float32) if shape else events["event"].astype(np.float32) * 2
    return events


def write_events(path, n: int, first_event: int = 0, chunk: int = 50, **kwargs) -> str:
    chunks = [fake_events(min(chunk, n - s), first_event + s, seed=first_event + s, **kwargs)
              for s in range(0, n, chunk)]
    write_tree(str(path), chunks)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("stream")
    out, first = [], 0
    for number, size in enumerate(SIZES):
        out.append(write_events(folder / f"f{number}.root", size, first_event=first))
        first += size
    return out


STREAM_KEYWORDS = ("seed", "rank", "world_size", "epoch", "truth", "read_ahead", "recycle", "name")


def stream(files, **kwargs) -> XECStream:
    """A stream over ``files``: keyword arguments are StreamSpec fields or XECStream keywords."""
    options = {"batch_size": 16, "chunksize": 40, "shuffle_buffer": 0, "drop_last": False, "num_threads": 2,
               "num_workers": 0, "seed": 0, **kwargs}
    keywords = {key: options.pop(key) for key in STREAM_KEYWORDS if key in options}
    return XECStream(files, Normalizer(), StreamSpec(**options), **keywords)


def collect(dataset: XECStream, workers: int | None = None) -> list[dict[str, torch.Tensor]]:
    workers = dataset.spec.num_workers if workers is None else workers
    return list(DataLoader(dataset, batch_size=None, num_workers=workers))


def events_of(batches) -> np.ndarray:
    return np.concatenate([b["event"].numpy() for b in batches]) if batches else np.empty(0, np.int64)


# --- planning ------------------------------------------------------------------------------------
def test_deal_covers_every_event_once_in_equal_shares():
    pieces = split_pieces([("a", 130, None), ("b", 70, None), ("c", 211, None)], chunksize=40)
    assert all(p.size <= 40 for p in pieces)
    for seed in (None, [3, 1]):
        shares = deal(pieces, 6, seed)
        sizes = [sum(p.size for p in share) for share in shares]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 411
        covered = sorted((p.path, e) for share in shares for p in share for e in range(p.start, p.stop))
        assert covered == sorted((p.path, e) for p in pieces for e in range(p.start, p.stop))
    capped = deal(pieces, 4, None, max_events=100)
    assert [sum(p.size for p in share) for share in capped] == [25, 25, 25, 25]


def test_fewer_files_than_shards_are_split_by_entry_ranges():
    shares = deal([Piece("only.root", 0, 10)], 4)
    assert [[(p.start, p.stop) for p in share] for share in shares] == [[(0, 2)], [(2, 5)], [(5, 7)], [(7, 10)]]


def test_steps_per_epoch_equal_across_ranks_for_uneven_input():
    for total in (411, 1000, 1023, 5):
        counts = worker_batches(total, 16, world_size=3, num_workers=2, drop_last=True)
        assert len(set(counts.sum(1))) == 1
        assert counts.sum(1)[0] == steps_per_epoch(total, 16, 3, 2)
        assert np.all(counts <= share_sizes(total, 6).reshape(3, 2) // 16)


def _drain(pool: EventPool, chunks, drop_last: bool) -> np.ndarray:
    out = []
    for chunk in chunks:
        out += [np.concatenate([src["npho"][rows][:, 0] for src, rows in segments]) for segments in pool.push(chunk)]
    out += [np.concatenate([src["npho"][rows][:, 0] for src, rows in segments]) for segments in pool.flush(drop_last)]
    return np.concatenate(out)


def _reads(*bounds):
    return [{"npho": np.arange(a, b)[:, None], "event": np.arange(a, b)} for a, b in bounds]


def test_pool_keeps_order_without_shuffle_and_counts_drops():
    pool = EventPool(batch_size=4)
    assert np.array_equal(_drain(pool, _reads((0, 6), (6, 12), (12, 17)), drop_last=True), np.arange(16))
    assert pool.dropped == 1 and len(pool) == 0
    pool = EventPool(batch_size=4)  # reads smaller than a batch: the carried rows are copied
    assert np.array_equal(_drain(pool, _reads((0, 3), (3, 6), (6, 9), (9, 10)), drop_last=False), np.arange(10))


def test_pool_shuffle_mixes_reads_and_loses_nothing():
    pool = EventPool(batch_size=4, keep=20, rng=np.random.default_rng(0))
    got = _drain(pool, _reads(*[(a, a + 10) for a in range(0, 50, 10)]), drop_last=False)
    assert np.array_equal(np.sort(got), np.arange(50)) and not np.array_equal(got, np.arange(50))
    assert len(set(got[:8]) & set(range(10))) < 8  # the first batches already mix later reads in


def test_pieces_and_reads_end_on_basket_boundaries():
    boundaries = np.array([0, 30, 60, 90, 100])
    pieces = split_pieces([("f", 100, boundaries)], chunksize=40)
    assert [(p.start, p.stop) for p in pieces] == [(0, 30), (30, 90), (90, 100)]
    assert read_steps(0, 100, 25, boundaries) == [(0, 30), (30, 60), (60, 90), (90, 100)]
    assert read_steps(10, 95, 50, boundaries) == [(10, 60), (60, 95)]
    assert read_steps(0, 7, 3) == [(0, 3), (3, 6), (6, 7)]


def test_read_ahead_keeps_one_chunk_beyond_the_callers_and_passes_errors_on():
    class Chunk:
        pass

    made: list[weakref.ref] = []
    peak = 0

    def chunks():
        nonlocal peak
        for _ in range(6):
            chunk = Chunk()
            made.append(weakref.ref(chunk))
            peak = max(peak, sum(ref() is not None for ref in made))
            yield chunk
        raise ValueError("bad chunk")

    got = 0
    with pytest.raises(ValueError, match="bad chunk"):
        for chunk in _read_ahead(chunks()):
            time.sleep(0.01)  # room for the reading thread to run ahead
            got += 1
            del chunk
    assert got == 6 and peak == 2


# --- exactly once, shuffling -----------------------------------------------------------------------
@pytest.mark.parametrize("shuffle_buffer, read_ahead", [(0, True), (100, True), (100, False)])
def test_every_event_exactly_once_across_two_ranks_and_two_workers(files, shuffle_buffer, read_ahead):
    seen = []
    for rank in range(2):
        dataset = stream(files, rank=rank, world_size=2, num_workers=2, shuffle_buffer=shuffle_buffer,
                         even_steps=False, seed=5, read_ahead=read_ahead)
        batches = collect(dataset)
        assert len(batches) == len(dataset)
        seen.append(events_of(batches))
    every = np.concatenate(seen)
    assert len(every) == sum(SIZES)
    assert np.array_equal(np.sort(every), np.arange(sum(SIZES)))
    assert not set(seen[0]) & set(seen[1])


def test_single_file_split_over_two_ranks_and_two_workers(files):
    seen = np.concatenate([events_of(collect(stream(files[1], rank=r, world_size=2, num_workers=2,
                                                    even_steps=False))) for r in range(2)])
    assert np.array_equal(np.sort(seen), np.arange(SIZES[0], SIZES[0] + SIZES[1]))


def test_shuffle_changes_order_not_multiset_and_is_seeded(files):
    plain = events_of(collect(stream(files)))
    first = events_of(collect(stream(files, shuffle_buffer=60, seed=1)))
    again = events_of(collect(stream(files, shuffle_buffer=60, seed=1)))
    other_epoch = events_of(collect(stream(files, shuffle_buffer=60, seed=1, epoch=1)))
    assert np.array_equal(plain, np.arange(sum(SIZES)))  # no shuffle: file order
    assert np.array_equal(np.sort(first), plain) and not np.array_equal(first, plain)
    assert np.array_equal(first, again)
    assert np.array_equal(np.sort(other_epoch), plain) and not np.array_equal(other_epoch, first)


def test_set_epoch_reshuffles(files):
    dataset = stream(files, shuffle_buffer=60, seed=1)
    first = events_of(collect(dataset))
    dataset.set_epoch(3)
    assert not np.array_equal(events_of(collect(dataset)), first)


# --- values ---------------------------------------------------------------------------------------
def _raw(files, branches):
    arrays = [uproot.open(f)["tree"].arrays(branches, library="np") for f in files]
    return {b: np.concatenate([a[b] for a in arrays]) for b in branches}


def test_values_equal_the_normalizer_on_the_raw_arrays(files):
    raw = _raw(files, ["npho", "relative_time", "event"])
    normalizer = Normalizer()
    batches = collect(stream(files, shuffle_buffer=50, num_workers=2, seed=2))
    assert {b["x"].dtype for b in batches} == {torch.float32} and {b["valid"].dtype for b in batches} == {torch.bool}
    rows = events_of(batches)  # events are numbered 0..410 in file order
    assert np.array_equal(raw["event"][rows], rows)
    x, valid = torch.cat([b["x"] for b in batches]), torch.cat([b["valid"] for b in batches])
    npho, time = raw["npho"][rows], raw["relative_time"][rows]
    x_ref, valid_ref = normalizer(npho, time)
    assert np.array_equal(valid.numpy(), valid_ref)
    np.testing.assert_allclose(x.numpy(), x_ref, rtol=1e-6, atol=1e-6)
    x_torch, valid_torch = normalizer(torch.from_numpy(npho), torch.from_numpy(time))
    assert torch.equal(valid, valid_torch)
    torch.testing.assert_close(x, x_torch, rtol=1e-6, atol=1e-6)
    # the sentinels sit exactly where a value is invalid; validity is never read back from them
    assert torch.all(x[..., 0][~valid[..., 0]] == normalizer.sentinel_npho)
    assert torch.all(x[..., 1][~valid[..., 1]] == normalizer.sentinel_time)
    assert torch.isfinite(x).all() and not valid.all() and valid.any()


def test_truth_branches_line_up_with_their_events(files):
    raw = _raw(files, ["event", "run", *TRUTH_SHAPES])
    batches = collect(stream(files, truth=True, shuffle_buffer=64, num_workers=2, seed=4))
    assert sum(len(b["event"]) for b in batches) == sum(SIZES)
    for batch in batches:
        rows = batch["event"].numpy()
        assert batch["run"].dtype == torch.int64 and batch["event"].dtype == torch.int64
        assert np.array_equal(batch["run"].numpy(), raw["run"][rows])
        for name, shape in TRUTH_SHAPES.items():
            assert batch[name].dtype == torch.float32 and tuple(batch[name].shape) == (len(rows), *shape)
            assert np.array_equal(batch[name].numpy(), raw[name][rows])


def test_no_truth_unless_asked(files):
    batch = next(iter(stream(files)))
    assert set(batch) == {"x", "valid", "run", "event"}


# --- batch shapes, steps, limits ----------------------------------------------------------------------
def test_drop_last_gives_equal_batch_shapes_and_logs_the_drop(files, caplog):
    caplog.set_level(logging.INFO, logger="xecmae.data.stream")
    dataset = stream(files, drop_last=True, shuffle_buffer=50, batch_size=32)
    batches = collect(dataset)
    assert len(batches) == len(dataset) == sum(SIZES) // 32
    assert {tuple(b["x"].shape) for b in batches} == {(32, N_SENSORS, 2)}
    assert {tuple(b["valid"].shape) for b in batches} == {(32, N_SENSORS, 2)}
    assert any("dropped" in r.getMessage() and "ragged tail" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("shuffle_buffer", [0, 50])
def test_reads_reuse_a_few_buffers(files, caplog, shuffle_buffer):
    """Every read lands in one of a few reused arrays per branch, whatever holds on to earlier reads."""
    caplog.set_level(logging.DEBUG, logger="xecmae.data.stream")
    dataset = stream(files, shuffle_buffer=shuffle_buffer, chunksize=20)
    assert sorted(events_of(collect(dataset))) == list(range(sum(SIZES)))
    lines = [r.getMessage() for r in caplog.records if "reused buffer" in r.getMessage()]
    counts = [int(line.split(" into ")[1].split()[0]) for line in lines]
    assert counts and max(counts) <= 2 * 3  # npho and time: one read held, one being read, one carried over


def test_without_drop_last_the_tail_is_a_smaller_final_batch(files):
    sizes = [len(b["event"]) for b in collect(stream(files, batch_size=32))]
    assert sizes[:-1] == [32] * (len(sizes) - 1) and sizes[-1] == sum(SIZES) % 32


def test_even_steps_every_rank_yields_len_batches_of_full_size(files):
    lengths = []
    for rank in range(3):
        dataset = stream(files, rank=rank, world_size=3, num_workers=2, drop_last=True, batch_size=16,
                         shuffle_buffer=50)
        batches = collect(dataset)
        assert len(batches) == len(dataset)
        assert all(len(b["event"]) == 16 for b in batches)
        lengths.append(len(batches))
    assert len(set(lengths)) == 1


def test_max_events_counts_all_ranks_together(files):
    seen = [events_of(collect(stream(files, rank=r, world_size=2, max_events=100, even_steps=False)))
            for r in range(2)]
    assert sum(len(s) for s in seen) == 100
    assert len(np.unique(np.concatenate(seen))) == 100


def test_make_loader_train_and_val(files):
    cfg = MAEConfig(data={"train_path": files, "val_path": files[0], "batch_size": 16, "chunksize": 40,
                          "num_workers": 2, "num_threads": 1, "shuffle_buffer": 64, "drop_last": True})
    train = [make_loader(cfg, "train", rank=r, world_size=2, epoch=1) for r in range(2)]
    assert len(train[0]) == len(train[1]) > 0
    assert train[0].worker_init_fn is map_large_blocks  # workers forked from a training process
    assert train[0].dataset.recycle
    assert train[0].dataset.spec.prefetch_factor == train[0].prefetch_factor == cfg.data.prefetch_factor
    for loader in train:
        batches = list(loader)
        assert len(batches) == len(loader) and all(len(b["event"]) == 16 for b in batches)
    val = make_loader(cfg, "val")
    first, second = events_of(list(val)), events_of(list(make_loader(cfg, "val")))
    assert np.array_equal(first, second)  # deterministic
    assert np.array_equal(np.sort(first), np.arange(SIZES[0]))  # every event, none dropped
    assert len(list(val)) == len(val)


def test_sim_source_streams_like_root_files():
    """Runs against xecmae.simulate: sim:// chunks are handled like ROOT chunks."""
    url = "sim://signal?seed=3&events=96"
    seen = []
    for rank in range(2):
        dataset = stream(url, batch_size=8, chunksize=16, drop_last=False, truth=True,
                         rank=rank, world_size=2, num_workers=2, even_steps=False, num_threads=1)
        batches = collect(dataset)
        assert len(batches) == len(dataset)
        for batch in batches:
            assert batch["x"].shape[1:] == (N_SENSORS, 2) and batch["valid"].dtype == torch.bool
            assert batch["emiAng"].shape[1:] == (2,) and batch["xyzTruth"].shape[1:] == (3,)
        seen.append(events_of(batches))
    every = np.concatenate(seen)
    assert len(every) == 96 and len(np.unique(every)) == 96
    one = next(iter(stream(url, batch_size=8, chunksize=16, drop_last=True, num_threads=1, epoch=0)))
    other = next(iter(stream(url, batch_size=8, chunksize=16, drop_last=True, num_threads=1, epoch=1)))
    assert not torch.equal(one["x"], other["x"])


@pytest.mark.parametrize("hold", [False, True])
def test_worker_memory_is_recycled_only_once_the_caller_lets_go(files, hold):
    """Batches the caller keeps are never overwritten; the memory of dropped ones is used again."""
    dataset = stream(files, shuffle_buffer=50, num_workers=1, recycle=True, prefetch_factor=2, drop_last=True)
    inodes, kept, copies = [], [], []
    for batch in DataLoader(dataset, batch_size=None, num_workers=1, prefetch_factor=2):
        inodes.append(storage_inode(batch["x"]))
        copies.append((batch["x"].clone(), batch["event"].clone()))
        if hold:
            kept.append(batch)
    assert len(copies) == len(dataset) > 8
    raw = _raw(files, ["npho", "relative_time"])
    for x, events in copies:  # what arrived is what the events' raw values normalise to
        torch.testing.assert_close(x, Normalizer()(torch.from_numpy(raw["npho"][events.numpy()]),
                                                   torch.from_numpy(raw["relative_time"][events.numpy()]))[0])
    if hold:
        assert len(set(inodes)) == len(inodes)
        assert all(torch.equal(b["x"], x) for b, (x, _) in zip(kept, copies, strict=True))
    else:
        assert len(set(inodes)) < len(inodes) / 2
