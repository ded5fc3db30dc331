"""Applying a trained model to files: filling the dead channels of a ROOT file.

The output is a copy of the input tree, every branch kept, with the dead channels of ``npho``
and ``relative_time`` replaced by the model's prediction (photons and seconds) and a new
per-sensor boolean branch ``filled``. Healthy channels are copied bit for bit. Only channels
dead in npho (1e10, NaN or inf) are filled; a dim sensor's time is real data and stays.
Channels given as dead (``dead``, :mod:`xecmae.data.deadchannels`) are filled as well.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from xecmae.apps.trained import check_run_options, load_trained
from xecmae.data.deadchannels import DeadChannels, apply_dead_channels
from xecmae.data.spec import CHUNK_EVENTS
from xecmae.errors import UserError
from xecmae.models import XEC_MAE

log = logging.getLogger(__name__)

FILLED_BRANCH = "filled"


def load_inpainter(path: str | Path, device: torch.device) -> XEC_MAE:
    """An inpainter (or MAE) from its checkpoint, EMA weights preferred, ready for inference."""
    return load_trained(path, ("inpainter", "mae"), "filling dead channels", device).model


@torch.no_grad()
def fill_chunk(model: XEC_MAE, npho: np.ndarray, time: np.ndarray, batch_size: int,
               device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw (N, 4760) npho and time -> (npho, time, filled) with the dead channels predicted."""
    norm = model.normalizer
    x, valid = norm(torch.from_numpy(npho), torch.from_numpy(time))
    dead = ~valid[..., 0]  # (N, 4760)
    new_npho, new_time = npho.copy(), time.copy()
    for start in range(0, len(npho), batch_size):
        part = slice(start, start + batch_size)
        d = dead[part]
        if not d.any():
            continue
        pred = model(x[part].to(device), valid[part].to(device), hidden=d.to(device)).pred.float().cpu()
        d_np = d.numpy()
        new_npho[part][d_np] = norm.npho_inverse(pred[..., 0]).numpy()[d_np]
        if pred.shape[-1] > 1:
            new_time[part][d_np] = norm.time_inverse(pred[..., 1]).numpy()[d_np]
    return new_npho, new_time, dead.numpy()


def fill_dead_channels(checkpoint: str | Path, input_path: str | Path, output_path: str | Path, *,
                       tree_name: str = "tree", npho_branch: str = "npho", time_branch: str = "relative_time",
                       chunk_events: int = CHUNK_EVENTS, batch_size: int = 64, device: str = "cpu",
                       dead: DeadChannels | None = None) -> dict[str, int]:
    """Write ``output_path``: the input with dead channels filled (those it marks and ``dead``'s).
    Returns event and channel counts."""
    from xecmae.data.rootio import check_branches, get_tree, open_file

    input_path, output_path = str(input_path), Path(output_path)
    check_request(input_path, output_path, chunk_events, batch_size, device)
    dev = torch.device(device)
    model = load_inpainter(checkpoint, dev)
    with open_file(input_path) as file:
        tree = get_tree(file, input_path, tree_name)
        if tree.num_entries == 0:
            raise UserError(f"{input_path}: tree {tree_name!r} has no entries: nothing to fill")
        check_branches(tree, input_path, {npho_branch: (4760,), time_branch: (4760,)})
        if dead is not None and dead.per_run:
            if "run" not in list(tree.keys()):
                raise UserError(f"{input_path}: no run branch, which the per-run dead-channel table "
                                f"{dead.source} needs")
            dead.check_runs(tree["run"].array(library="np"), where=input_path)
        counts = _write_filled(tree, model, dev, input_path, output_path, npho_branch, time_branch, tree_name,
                               chunk_events, batch_size, dead)
    log.info("%s: %d events, %d dead channels filled (%.2f per event)", output_path, counts["events"],
             counts["filled_channels"], counts["filled_channels"] / max(counts["events"], 1))
    return counts


def check_request(input_path: str, output_path: Path, chunk_events: int, batch_size: int, device: str) -> None:
    """Everything about a fill request that can be refused before the model runs, one line each."""
    from xecmae.apps.predict import check_output

    check_run_options(chunk_events, batch_size, device)
    check_output(output_path, [input_path])


def _write_filled(tree, model: XEC_MAE, dev: torch.device, input_path: str, output_path: Path, npho_branch: str,
                  time_branch: str, tree_name: str, chunk_events: int, batch_size: int,
                  dead: DeadChannels | None = None) -> dict[str, int]:
    """Stream ``tree`` through :func:`fill_chunk` into ``output_path``, written atomically."""
    from xecmae.data.rootio import write_tree

    counts = {"events": 0, "filled_channels": 0}

    def chunks() -> Iterator[dict[str, np.ndarray]]:
        with tqdm(total=tree.num_entries, desc="filling", unit="ev", disable=None) as bar:
            for arrays in _read_chunks(tree, input_path, chunk_events):
                jagged = [k for k, v in arrays.items() if v.dtype == object]
                if jagged:
                    raise UserError(f"{input_path}: variable-length branches are not supported: {', '.join(jagged)}")
                npho, time = arrays[npho_branch], arrays[time_branch]
                if dead is not None:
                    runs = arrays["run"] if "run" in arrays else np.full(len(npho), -1)
                    npho, time = apply_dead_channels(npho, time, dead.masks(runs))
                npho, time, filled = fill_chunk(model, npho, time, batch_size, dev)
                arrays[npho_branch], arrays[time_branch], arrays[FILLED_BRANCH] = npho, time, filled
                counts["events"] += len(npho)
                counts["filled_channels"] += int(filled.sum())
                bar.update(len(npho))
                yield arrays

    try:
        write_tree(output_path, chunks(), tree_name=tree_name)
    except OSError as exc:
        raise UserError(f"cannot write {output_path} ({os.strerror(exc.errno) if exc.errno else exc})") from None
    return counts


def _read_chunks(tree, input_path: str, chunk_events: int) -> Iterator[dict[str, np.ndarray]]:
    """``tree.iterate`` with a damaged basket reported as one line naming the entries."""
    from xecmae.data.rootio import DataError

    start = 0
    iterator = tree.iterate(library="np", step_size=chunk_events)
    while True:
        try:
            arrays = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise DataError(f"{input_path}: cannot read entries from {start} of tree {tree.name!r} "
                            f"({type(exc).__name__}: {first})") from None
        start += len(next(iter(arrays.values()))) if arrays else 0
        yield arrays
