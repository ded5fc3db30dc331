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
