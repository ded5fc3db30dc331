"""Training with dead channels: a random dead map per event, drawn on the device, hidden from the model.

A regressor fine-tuned this way (``training.dead_channels.fraction > 0``) learns to reconstruct
without the channels that die in real runs, so it needs no filler. Per training event,
``round(f * 4760)`` sensors die (f = ``fraction``, or uniform in [0, fraction] with ``varying``),
split over the six faces in the proportions of a real run (0.5% of the inner MPPCs at 1% overall,
8.5% of the top and bottom PMTs), exactly as the generator splits them
(:func:`xecmae.simulate.deadmaps.face_dead_counts`; a full face passes its share to the others).
With ``clustered``, as in the generator's realistic maps
(:func:`xecmae.simulate.deadmaps.clustered_dead_mask`), about ``board_fraction`` of each face's
dead channels fail as whole readout boards of ``board_channels`` consecutive ids, the realistic
detector's values (:class:`xecmae.simulate.spec.DetectorSpec`); the rest are scattered over the
face's live channels. Everything is a few sorts of (B, 4760) random keys from the trainer's
generator, on the device; seeded per batch, a resumed run draws the same maps again.

A hidden channel is what a dead one is at the model's input: both validity flags False and the
normaliser's sentinels as values. With ``filler`` (an inpainter checkpoint, frozen) the hidden
channels are then filled by its prediction exactly as the inference fill does it
(:func:`xecmae.apps.fill.fill_chunk`: the prediction made raw again and normalised, so a filled
sensor below the time threshold keeps an invalid time), so that the regressor can learn what the
inpainter gets wrong; it is meant to be run after that inpainter's fill (on the realistic detector
it was no better than the regressor trained with sentinels and run after the fill: README). Validation batches are
left as they are.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from xecmae.detector import geometry as geo
from xecmae.detector.normalize import DEAD_VALUE
from xecmae.errors import UserError
from xecmae.simulate.deadmaps import face_dead_counts
from xecmae.simulate.spec import DetectorSpec


@cache
def _face_count_table() -> np.ndarray:
    """(4761, 6): row c = how c dead channels split over the faces, as the generator splits them."""
    return np.stack([face_dead_counts(c) for c in range(geo.N_SENSORS + 1)])


@cache
def _tables(device: str, board_channels: int) -> dict[str, torch.Tensor]:
    """Per-face and per-board index tables on ``device`` (built once)."""
    face = geo.face_of_sensor()
    sizes = np.bincount(face, minlength=len(geo.FACE_NAMES))
    board_of_sensor = np.empty(geo.N_SENSORS, dtype=np.int64)
    board_face, boards_per_face, first = [], [], 0
    for f, name in enumerate(geo.FACE_NAMES):
        ids = geo.face_sensor_ids(name)
        n = -(-len(ids) // board_channels)
        board_of_sensor[ids] = first + np.arange(len(ids)) // board_channels
        board_face += [f] * n
        boards_per_face.append(n)
        first += n
    arrays = {"face": face, "face_counts": _face_count_table(), "board_of_sensor": board_of_sensor,
              "board_face": np.array(board_face), "boards_per_face": np.array(boards_per_face),
              "face_start": np.concatenate([[0], np.cumsum(sizes)[:-1]]),
              "board_start": np.concatenate([[0], np.cumsum(boards_per_face)[:-1]]),
              "onehot": np.eye(len(sizes))[face]}
    arrays |= {"face_offset": 3.0 * face.astype(np.float32),
               "board_offset": 3.0 * arrays["board_face"].astype(np.float32),
               "sensor_start": arrays["face_start"][face], "board_first": arrays["board_start"][arrays["board_face"]]}
    return {k: torch.as_tensor(np.array(v), device=device) for k, v in arrays.items()}


def _rank_within_group(keys: torch.Tensor, offset: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """(B, n) rank of each key among the keys of its group (ascending), ``keys`` in [0, 2).

    ``offset`` (n,) is 3 x the item's group, ``start`` (n,) the number of items in earlier groups.
    """
    order = torch.argsort(keys + offset, dim=1)
    steps = torch.arange(keys.shape[1], device=keys.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, steps) - start


def draw_dead_channels(batch: int, fraction: float, generator: torch.Generator, device: torch.device, *,
                       clustered: bool = True, varying: bool = False, board_channels: int | None = None,
                       board_fraction: float | None = None) -> torch.Tensor:
    """(batch, 4760) bool, True = dead: a random dead map per event (see the module docstring)."""
    spec = DetectorSpec()
    board_channels = spec.board_channels if board_channels is None else board_channels
    board_fraction = spec.board_fraction if board_fraction is None else board_fraction
    t = _tables(str(device), int(board_channels))
    scale = torch.rand(batch, generator=generator, device=device) if varying else torch.ones(batch, device=device)
    count = torch.round(scale.double() * fraction * geo.N_SENSORS).long()
    target = t["face_counts"][count]  # (B, 6)
    dead = torch.zeros(batch, geo.N_SENSORS, dtype=torch.bool, device=device)
    if clustered:
        wanted = torch.floor(board_fraction * target / board_channels
                             + torch.rand(target.shape, generator=generator, device=device, dtype=torch.float64))
        n_boards = torch.minimum(torch.minimum(wanted.long(), target // board_channels), t["boards_per_face"])
        keys = torch.rand(batch, len(t["board_face"]), generator=generator, device=device)
        rank = _rank_within_group(keys, t["board_offset"], t["board_first"])
        chosen = rank < n_boards.gather(1, t["board_face"].expand(batch, -1))  # (B, boards)
        dead = chosen.gather(1, t["board_of_sensor"].expand(batch, -1))
    extra = target - (dead.double() @ t["onehot"]).long()  # (B, 6) still to draw, scattered
    keys = torch.rand(batch, geo.N_SENSORS, generator=generator, device=device) + dead.float()  # dead ones last
    rank = _rank_within_group(keys, t["face_offset"], t["sensor_start"])
    return dead | (rank < extra.gather(1, t["face"].expand(batch, -1)))


def hide_channels(x: torch.Tensor, valid: torch.Tensor, dead: torch.Tensor, normalizer
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Model input (B, 4760, 2) and validity with the ``dead`` (B, 4760) channels made dead (sentinels)."""
    sentinel = x.new_tensor([normalizer.sentinel_npho, normalizer.sentinel_time])
    return torch.where(dead[..., None], sentinel, x), valid & ~dead[..., None]


class InpainterFill:
    """A frozen inpainter that fills hidden channels of a normalised batch, as the inference fill does."""

    def __init__(self, checkpoint: str, normalizer):
        from xecmae.train.rebuild import rebuild  # kind checked, EMA weights preferred, as at inference

        try:
            self.model = rebuild(checkpoint, ("inpainter", "mae"), "training.dead_channels.filler").model.eval()
        except UserError as exc:
            raise UserError(f"training.dead_channels.filler: {exc}") from exc
        self.model.requires_grad_(False)
        if self.model.normalizer != normalizer:
            raise UserError(f"training.dead_channels.filler {checkpoint}: its normalisation "
                            f"({self.model.normalizer}) is not the regressor's ({normalizer})")

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, valid: torch.Tensor, dead: torch.Tensor, autocast
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model input (B, 4760, 2) and validity with the ``dead`` (B, 4760) channels filled."""
        self.model.to(x.device)
        with autocast():
            pred = self.model(x, valid, hidden=dead).pred.float()
        norm = self.model.normalizer
        time = norm.time_inverse(pred[..., 1]) if pred.shape[-1] > 1 else torch.full_like(pred[..., 0], DEAD_VALUE)
        filled_x, filled_valid = norm(norm.npho_inverse(pred[..., 0]), time)
        return torch.where(dead[..., None], filled_x, x), torch.where(dead[..., None], filled_valid, valid)


class DeadChannelObjective:
    """An objective whose training batches have random dead channels (``training.dead_channels``)."""

    def __init__(self, objective, cfg, normalizer):
        self.objective, self.cfg = objective, cfg
        self.filler = InpainterFill(cfg.filler, normalizer) if cfg.filler else None

    def __call__(self, model, raw, batch: dict[str, torch.Tensor], generator: torch.Generator, autocast,
                 training: bool):
        if training and self.cfg.fraction > 0:
            dead = draw_dead_channels(len(batch["x"]), self.cfg.fraction, generator, batch["x"].device,
                                      clustered=self.cfg.clustered, varying=self.cfg.varying)
            x, valid = hide_channels(batch["x"], batch["valid"], dead, raw.normalizer)
            if self.filler is not None:
                x, valid = self.filler(x, valid, dead, autocast)
            batch = {**batch, "x": x, "valid": valid}
        return self.objective(model, raw, batch, generator, autocast, training)


def with_dead_channels(objective, cfg, normalizer):
    """``objective`` itself when ``cfg.fraction`` is 0 (the default), else the :class:`DeadChannelObjective`."""
    if cfg.filler and cfg.fraction == 0:
        raise UserError("training.dead_channels.filler needs training.dead_channels.fraction > 0 (nothing to fill)")
    return DeadChannelObjective(objective, cfg, normalizer) if cfg.fraction > 0 else objective
