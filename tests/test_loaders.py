"""The run's loaders: workers that persist across epochs give every epoch the order a fresh loader gives."""

import numpy as np
import pytest

from test_data_stream import SIZES, files  # noqa: F401 (the fixture)
from xecmae.config import MAEConfig
from xecmae.data.loaders import EpochLoader, make_loader


def config(files, **data):  # noqa: F811
    return MAEConfig(data={"train_path": files, "val_path": files[0], "batch_size": 16, "chunksize": 40,
                           "num_workers": 2, "num_threads": 1, "shuffle_buffer": 64, **data},
                     training={"seed": 4})


def order(batches) -> np.ndarray:
    return np.concatenate([b["event"].numpy() for b in batches])


def worker_pids(loader) -> list[int]:
    return [w.pid for w in loader._iterator._workers]


def test_persistent_workers_keep_each_epochs_shuffle(files):  # noqa: F811
    cfg = config(files)
    assert cfg.data.persistent_workers  # the default
    run = EpochLoader(cfg, "train", rank=1, world_size=2)
    assert run.persistent
    seen, pids = [], []
    for epoch in range(3):
        loader = run.loader(epoch)
        batches = []
        for index, batch in enumerate(loader):
            batches.append(batch)
            if epoch == 1 and index == 1:
                break  # a partial epoch (a resumed or stopped run) leaves the workers mid-iteration
        seen.append(order(batches))
        pids.append(worker_pids(loader))
        fresh = order(make_loader(cfg, "train", rank=1, world_size=2, epoch=epoch))
        assert np.array_equal(seen[-1], fresh[:len(seen[-1])]), epoch  # the same order as a fresh loader's
        if epoch != 1:
            assert len(seen[-1]) == 16 * len(run)
    assert pids[0] == pids[1] == pids[2]  # the same worker processes every epoch
    assert not np.array_equal(seen[0], seen[2])  # shuffled anew each epoch


@pytest.mark.parametrize("data", [{"persistent_workers": False}, {"num_workers": 0}])
def test_without_persistent_workers_a_loader_per_epoch(files, data):  # noqa: F811
    run = EpochLoader(config(files, **data), "train")
    assert not run.persistent
    first, second = run.loader(0), run.loader(1)
    assert first is not second and first.dataset is second.dataset  # the files are scanned once
    assert second.dataset.epoch == 1


def test_validation_loader_starts_its_workers_per_epoch_and_sees_every_event(files):  # noqa: F811
    run = EpochLoader(config(files), "val", persistent=False)
    events = order(run.loader(3))
    assert np.array_equal(np.sort(events), np.arange(SIZES[0]))
