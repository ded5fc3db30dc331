"""Shared fixtures. The reference geometry lives beside the checkout, in ../shared/geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE_GEOMETRY = REPO.parent / "shared" / "geometry"


def _reference(name: str) -> np.ndarray:
    path = REFERENCE_GEOMETRY / name
    # A missing reference must fail the suite, never skip it.
    assert path.is_file(), f"reference geometry {path} is missing: it belongs at ../shared/geometry beside the checkout"
    return np.loadtxt(path)


@pytest.fixture(scope="session")
def reference_positions() -> np.ndarray:
    """(4760, 4): id, x, y, z in cm."""
    return _reference("sensor_positions.txt")


@pytest.fixture(scope="session")
def reference_directions() -> np.ndarray:
    """(4760, 8): id, direction xyz, position xyz, face code (0 inner, 1 outer, 2 US, 3 DS, 4 top, 5 bottom)."""
    return _reference("sensor_directions.txt")


@pytest.fixture(scope="session")
def sim_data(tmp_path_factory) -> dict[str, str]:
    """Small simulated ROOT inputs shared by the training tests: 2 train files of 96 events, 1 val file.

    The ideal detector response: these tests check the training machinery, and their thresholds
    (a tiny model beating a baseline after a few epochs) were set on it. Train and val share one
    channel calibration on either response (it is fixed by the detector's calibration_seed and
    the run, not the event seed); on realistic events the inpainter test misses its threshold."""
    from xecmae.simulate import EventGenerator, write_root

    root = tmp_path_factory.mktemp("sim")
    write_root(root / "train.root", 192, EventGenerator(seed=11, detector="ideal"), files=2, progress=False)
    write_root(root / "val.root", 64, EventGenerator(seed=12, detector="ideal"), progress=False)
    return {"train": str(root / "train_*.root"), "val": str(root / "val.root"), "dir": str(root)}


def tiny_config(sim_data: dict[str, str], run_dir, schema=None, **sections):
    """A tiny, fast configuration over ``sim_data`` (an MAE one unless ``schema`` says otherwise);
    keyword sections update the defaults."""
    from xecmae.config import MAEConfig
    from xecmae.configload import validate

    raw = {
        "data": {"train_path": sim_data["train"], "val_path": sim_data["val"], "batch_size": 32,
                 "chunksize": 64, "num_workers": 0, "shuffle_buffer": 64},
        "model": {"size": "tiny"},
        "training": {"epochs": 2, "lr": 1e-3, "warmup_epochs": 0, "log_interval": 2, "seed": 3},
        "checkpoint": {"save_dir": str(run_dir), "run_name": "run", "save_predictions": False,
                       "save_every_steps": 0},
        "mlflow": {"enabled": False},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return validate(raw, schema or MAEConfig)
