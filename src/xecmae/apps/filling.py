"""Filling dead channels before a regressor sees them: by the neighbour average or by a trained inpainter.

Both take raw (N, 4760) npho (photons) and relative_time (seconds), a channel being dead when
its npho is (1e10, NaN or inf), and return new arrays in which only the dead channels changed:
every other channel is copied bit for bit. A dim sensor's time (npho below the time threshold)
is real data and stays as it is.

- :func:`neighbour_fill`: npho and time of a dead channel from its valid neighbours on the same
  face (:func:`xecmae.detector.neighbours.neighbour_average`, weights 1/d^2 within 20 cm; the face's mean,
  then the event's, where there are none). The time is averaged over neighbours with a valid time.
- :func:`inpainter_fill`: the prediction of an inpainter (or MAE) checkpoint
  (:func:`xecmae.apps.fill.fill_chunk`).
"""

from __future__ import annotations

import numpy as np
import torch

from xecmae.detector.neighbours import neighbour_average
from xecmae.detector.normalize import Normalizer
from xecmae.detector.threads import single_thread


def neighbour_fill(npho: np.ndarray, time: np.ndarray, normalizer: Normalizer
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(npho, time, filled) with every dead channel replaced by the average of its valid neighbours."""
    valid_npho, valid_time = normalizer.validity(npho, time)
    dead = ~valid_npho
    if not dead.any():
        return npho.copy(), time.copy(), dead
    with single_thread():
        est_npho = neighbour_average(torch.from_numpy(np.where(valid_npho, npho, 0.0)),
                                     torch.from_numpy(valid_npho)).numpy()
        est_time = neighbour_average(torch.from_numpy(np.where(valid_time, time, 0.0).astype(np.float64)),
                                     torch.from_numpy(valid_time)).numpy()
    has_time = valid_time.any(axis=1, keepdims=True)  # an event without any valid time: times stay dead
    new_npho = np.where(dead, est_npho.astype(npho.dtype), npho)
    new_time = np.where(dead & has_time, est_time.astype(time.dtype), time)
    return new_npho, new_time, dead


def inpainter_fill(model, npho: np.ndarray, time: np.ndarray, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(npho, time, filled) with every dead channel replaced by the inpainter's prediction."""
    from xecmae.apps.fill import fill_chunk

    return fill_chunk(model, npho, time, batch_size, torch.device(device))
