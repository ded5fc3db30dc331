"""Prediction files: per-event truth, masked input, reconstruction and error for every sensor.

``mae_predictions_epoch_N.root`` holds a TTree ``tree`` with ``event_id``, ``run`` and float32[4760]
branches ``truth_X``, ``masked_X``, ``pred_X``, ``error_X`` (pred - truth) for X in the predicted
channels, plus ``mask`` (1 = hidden), ``valid_npho`` and ``valid_time`` (1 = the truth is a real
value), all in normalized units; a one-entry TTree ``metadata`` has ``predict_channels``
("npho" or "npho,time") and the fields of the :class:`~xecmae.detector.normalize.Normalizer`
that convert back to photons and seconds.
Files are written in chunks by :class:`xecmae.data.rootio.TreeWriter`, atomically.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import uproot

from xecmae.data.atomic import CloseOrAbort
from xecmae.data.rootio import TreeWriter
from xecmae.detector.geometry import N_SENSORS
from xecmae.detector.normalize import Normalizer

TREE = "tree"
METADATA = "metadata"
SENSOR_ARRAY = np.dtype((np.float32, (N_SENSORS,)))
CHUNK_EVENTS = 128  # ~2.4 MB per branch per basket


def branch_types(channels: tuple[str, ...]) -> dict[str, Any]:
    types: dict[str, Any] = {"event_id": np.int64, "run": np.int32}
    for name in channels:
        for kind in ("truth", "masked", "pred", "error"):
            types[f"{kind}_{name}"] = SENSOR_ARRAY
    for name in ("mask", "valid_npho", "valid_time"):
        types[name] = SENSOR_ARRAY
    return types


class PredictionWriter(CloseOrAbort):
    """Collects batches and writes them in chunks of ``chunk_events``; complete or gone, as a :class:`TreeWriter`."""

    def __init__(self, path: str | Path, channels: tuple[str, ...], normalizer: Normalizer,
                 chunk_events: int = CHUNK_EVENTS):
        self.path = Path(path)
        self.channels = tuple(channels)
        self.normalizer = normalizer
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.out = TreeWriter(self.path, TREE, branch_types(self.channels), basket_events=chunk_events)

    @property
    def written(self) -> int:
        """Events written so far (without those still buffered)."""
        return self.out.entries

    def add(self, *, event: np.ndarray, run: np.ndarray, x: np.ndarray, valid: np.ndarray, hidden: np.ndarray,
            pred: np.ndarray) -> None:
        """One batch, numpy arrays: x, valid (B, 4760, 2); hidden (B, 4760); pred (B, 4760, C)."""
        norm = self.normalizer
        masked = np.where(hidden[..., None], np.float32([norm.sentinel_npho, norm.sentinel_time]), x)
        arrays = {"event_id": event.astype(np.int64), "run": run.astype(np.int32),
                  "mask": hidden.astype(np.float32),
                  "valid_npho": valid[..., 0].astype(np.float32), "valid_time": valid[..., 1].astype(np.float32)}
        for c, name in enumerate(self.channels):
            arrays[f"truth_{name}"] = x[..., c].astype(np.float32)
            arrays[f"masked_{name}"] = masked[..., c].astype(np.float32)
            arrays[f"pred_{name}"] = pred[..., c].astype(np.float32)
            arrays[f"error_{name}"] = (pred[..., c] - x[..., c]).astype(np.float32)
        self.out.extend(arrays)

    def _complete(self) -> Path:
        """The last chunk, the metadata entry, then the file under its final name."""
        self.out.flush()
        norm = self.normalizer
        self.out.write_metadata({"predict_channels": ",".join(self.channels), **normalizer_metadata(norm),
                                 "events": np.int64(self.out.entries)}, METADATA)
        return self.out.close()

    def abort(self) -> None:
        self.out.abort()


def read_metadata(source: str | Path | uproot.ReadOnlyDirectory) -> dict[str, Any]:
    """The metadata entry of a prediction file (a path or an open file), ``predict_channels`` as a tuple."""
    if isinstance(source, (str, Path)):
        with uproot.open(source) as f:
            return read_metadata(f)
    raw = source[METADATA].arrays(library="np")
    meta = {k: (v[0].item() if hasattr(v[0], "item") else v[0]) for k, v in raw.items()}
    meta["predict_channels"] = tuple(str(meta["predict_channels"]).split(","))
    return meta


def normalizer_metadata(norm: Normalizer) -> dict[str, Any]:
    """The normaliser's fields as metadata entries: the scheme a string, every other field float64."""
    return {f.name: (value if isinstance(value := getattr(norm, f.name), str) else float(value))
            for f in fields(Normalizer)}


def normalizer_from_metadata(meta: dict[str, Any]) -> Normalizer:
    """The normaliser a prediction file was written with (its fields read back from the metadata)."""
    values = {f.name: meta[f.name] for f in fields(Normalizer)}
    return Normalizer(**values | {"npho_scheme": str(values["npho_scheme"])})
