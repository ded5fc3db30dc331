"""Dead channels: from a list of ids, scattered at the published per-face rates, or clustered.

Rates per face at 1% dead overall (inner, us, ds, outer, top, bottom): 0.5%, 2.3%, 2.3%, 3.4%,
8.5%, 8.5% (one real run: 45 of 4760 dead, inner 20, outer 8, upstream 3, downstream 2, top 7,
bottom 5). In real runs neighbouring channels fail together when a readout board does:
:func:`clustered_dead_mask` puts about ``board_fraction`` of each face's dead channels into whole
boards (``board_channels`` consecutive ids of one face, a strip of neighbours) and scatters the
rest. Both draws are fixed by (seed, run).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xecmae.detector import geometry as geo
from xecmae.errors import UserError

# dead-channel rates per face at dead_fraction = 0.01 (inner, us, ds, outer, top, bottom)
DEAD_RATE_AT_ONE_PERCENT = (0.005, 0.023, 0.023, 0.034, 0.085, 0.085)
_SEED_TAG_DEAD = 0xDEAD


def dead_mask_from_ids(ids: Sequence[int] | np.ndarray, source: str = "dead map") -> np.ndarray:
    """Sensor ids (or a (4760,) bool mask) -> (4760,) bool mask; bad ids are a :class:`UserError`."""
    arr = np.asarray(ids)
    if arr.dtype == bool:
        if arr.shape != (geo.N_SENSORS,):
            raise UserError(f"{source}: a boolean mask needs {geo.N_SENSORS} entries, got shape {arr.shape}")
        return arr.copy()
    arr = arr.ravel()
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        as_float = arr.astype(float)
        if not np.all(np.isfinite(as_float) & (as_float == np.round(as_float))):
            raise UserError(f"{source}: sensor ids must be whole numbers")
        arr = as_float.astype(np.int64)
    bad = np.unique(arr[(arr < 0) | (arr >= geo.N_SENSORS)])
    if bad.size:
        named = ", ".join(str(int(b)) for b in bad[:8]) + (f" and {bad.size - 8} more" if bad.size > 8 else "")
        raise UserError(f"{source}: sensor id{'s' * (bad.size > 1)} {named} "
                        f"{'are' if bad.size > 1 else 'is'} outside 0-{geo.N_SENSORS - 1}")
    mask = np.zeros(geo.N_SENSORS, dtype=bool)
    mask[arr] = True
    return mask


def random_dead_mask(fraction: float, seed: int, run: int) -> np.ndarray:
    """About ``fraction`` of the sensors, face by face in the proportions of a real run.

    At 1% that is 0.5% of the inner MPPCs, 2.3% of the lateral, 3.4% of the outer and 8.5% of
    the top/bottom PMTs. Exactly ``round(fraction * 4760)`` sensors are drawn (weighted, without
    replacement), so large fractions saturate gracefully.
    """
    count = round(fraction * geo.N_SENSORS)
    mask = np.zeros(geo.N_SENSORS, dtype=bool)
    if count == 0:
        return mask
    rng = np.random.default_rng(np.random.SeedSequence([_SEED_TAG_DEAD, seed, run]))
    weight = np.asarray(DEAD_RATE_AT_ONE_PERCENT)[geo.face_of_sensor()]
    keys = np.log(rng.random(geo.N_SENSORS)) / weight  # weighted sampling without replacement
    mask[np.argsort(keys)[-count:]] = True
    return mask




def face_dead_counts(count: int) -> np.ndarray:
    """Split ``count`` dead channels over the six faces in the published proportions (largest
    remainder, each face capped at its size): (6,) ints summing to min(count, 4760)."""
    sizes = np.array([len(geo.face_sensor_ids(f)) for f in geo.FACE_NAMES])
    weight = np.asarray(DEAD_RATE_AT_ONE_PERCENT) * sizes
    counts = np.zeros(len(sizes), dtype=np.int64)
    left = min(count, int(sizes.sum()))
    while left > 0:
        room = counts < sizes
        share = np.where(room, weight, 0.0)
        want = left * share / share.sum()
        add = np.minimum(np.floor(want).astype(np.int64), sizes - counts)
        if not add.any():  # hand out the remainder one by one, largest fraction first
            order = np.argsort(-(want - np.floor(want)) - room * 1e-9)
            add[order[:left]] = 1
            add = np.minimum(add, sizes - counts)
        counts += add
        left -= int(add.sum())
    return counts


def clustered_dead_mask(fraction: float, seed: int, run: int, board_channels: int = 16,
                        board_fraction: float = 0.5) -> np.ndarray:
    """About ``fraction`` of the sensors dead, face by face, a share of them in whole readout boards.

    Exactly ``round(fraction * 4760)`` sensors. On each face with t dead channels,
    ``floor(board_fraction * t / board_channels + u)`` boards (u uniform, at most t //
    board_channels) fail whole; the rest are drawn one by one among the face's live channels.
    """
    count = round(fraction * geo.N_SENSORS)
    mask = np.zeros(geo.N_SENSORS, dtype=bool)
    if count == 0:
        return mask
    rng = np.random.default_rng(np.random.SeedSequence([_SEED_TAG_DEAD, seed, run, 1]))
    for face, target in zip(geo.FACE_NAMES, face_dead_counts(count), strict=True):
        ids = geo.face_sensor_ids(face)
        boards = -(-len(ids) // board_channels)
        wanted = int(np.floor(board_fraction * target / board_channels + rng.random()))
        n_boards = min(wanted, int(target) // board_channels, boards)
        for board in rng.choice(boards, n_boards, replace=False):
            mask[ids[board * board_channels:(board + 1) * board_channels]] = True
        alive = ids[~mask[ids]]
        extra = int(target) - int(mask[ids].sum())
        if extra > 0:
            mask[rng.choice(alive, extra, replace=False)] = True
    return mask
