"""Between the 4760-sensor vector and the six face tensors, in normalized (model) space.

The inner, US and DS faces are plain gathers. The outer face goes through its fine grid.
On the way in, npho is extensive and time intensive: photons are de-normalized, spread evenly
over each sensor's footprint and normalized again (spreading in log space would be wrong), time
is copied. On the way out, every outer cell predicts the normalized value of the sensor that owns
it, and a sensor's prediction is the mean over its footprint.
"""

from __future__ import annotations

import torch
from torch import nn

from xecmae.detector import geometry as geo
from xecmae.detector.normalize import Normalizer
from xecmae.models.spec import EncoderConfig

INPUT_CHANNELS = 4  # npho, time, npho missing, time missing


def outer_pool(outer_mode: str, outer_fine_pool: tuple[int, int] | None) -> tuple[int, int]:
    """Pooling of the 45 x 72 fine grid: ``split`` is the coarse 9 x 24 PMT layout."""
    if outer_mode == "split":
        return geo.COARSE_CELL
    if outer_mode == "finegrid":
        return tuple(outer_fine_pool) if outer_fine_pool else (1, 1)
    raise ValueError(f"outer_mode must be 'finegrid' or 'split', got {outer_mode!r}")


class FaceMapper(nn.Module):
    """Gathers per-sensor features into face tensors and scatters face predictions back."""

    def __init__(self, normalizer: Normalizer, spec: EncoderConfig):
        """The outer face's grid from ``spec.outer_mode`` and ``spec.outer_fine_pool``."""
        super().__init__()
        self.normalizer = normalizer
        self.pool = outer_pool(spec.outer_mode, spec.outer_fine_pool)
        self.outer = geo.OuterGrid(self.pool)
        for face, ids in (("inner", geo.inner_map()), ("us", geo.lateral_map("us")),
                          ("ds", geo.lateral_map("ds")), ("top", geo.hex_ids("top")),
                          ("bottom", geo.hex_ids("bottom")), ("outer_fine", geo.outer_fine_map())):
            self.register_buffer(f"ids_{face}", torch.tensor(ids.ravel()), persistent=False)
        self.shapes: dict[str, tuple[int, ...]] = {
            "inner": geo.INNER_SHAPE, "us": geo.LATERAL_SHAPE, "ds": geo.LATERAL_SHAPE,
            "outer": self.outer.shape, "top": (73,), "bottom": (73,),
        }

    def to_faces(self, x: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 4760, 2) values + validity -> encoder inputs with 4 channels per face.

        Grids come out (B, 4, H, W) in channels-last memory; top/bottom (B, 73, 4).
        """
        missing = (~valid).to(x.dtype)
        features = torch.cat([x, missing], dim=-1)  # (B, 4760, 4)
        faces = {}
        for face in ("inner", "us", "ds"):
            h, w = self.shapes[face]
            grid = features[:, getattr(self, f"ids_{face}")].unflatten(1, (h, w))  # (B, H, W, 4)
            faces[face] = grid.permute(0, 3, 1, 2)
        faces["outer"] = self._outer_input(x, valid)
        faces["top"] = features[:, self.ids_top]
        faces["bottom"] = features[:, self.ids_bottom]
        return faces

    def _outer_input(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        norm = self.normalizer
        valid_npho, valid_time = valid[..., 0], valid[..., 1]
        photons = norm.npho_inverse(torch.where(valid_npho, x[..., 0], 0.0))
        density, time, cov_npho, cov_time = self.outer.to_grid(photons, x[..., 1], valid_npho, valid_time)
        npho = torch.where(cov_npho > 0, norm.npho_forward(density), norm.sentinel_npho)
        time = torch.where(cov_time > 0, time, norm.sentinel_time)
        grid = torch.stack([npho, time, 1 - cov_npho, 1 - cov_time], dim=-1)  # (B, H, W, 4)
        return grid.permute(0, 3, 1, 2)

    def to_grids(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 4760, C) per-sensor values -> decoder-shaped faces; the inverse of :meth:`to_sensors`
        (exact without outer pooling; a pooled outer cell averages the sensors it overlaps)."""
        grids = {}
        for face in ("inner", "us", "ds", "outer_fine"):
            h, w = self.shapes[face] if face != "outer_fine" else geo.OUTER_FINE_SHAPE
            grids[face] = values[:, getattr(self, f"ids_{face}")].unflatten(1, (h, w)).permute(0, 3, 1, 2)
        fine = grids.pop("outer_fine")
        grids["outer"] = fine if self.pool == (1, 1) else torch.nn.functional.avg_pool2d(fine, self.pool)
        for face in ("top", "bottom"):
            grids[face] = values[:, getattr(self, f"ids_{face}")].transpose(1, 2)
        return grids

    def to_sensors(self, faces: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoder outputs -> (B, 4760, C): grids (B, C, H, W), top/bottom (B, C, 73)."""
        first = faces["inner"]
        batch, channels = first.shape[:2]
        out = first.new_empty(batch, geo.N_SENSORS, channels)
        for face in ("inner", "us", "ds", "top", "bottom"):
            out[:, getattr(self, f"ids_{face}")] = faces[face].flatten(2).transpose(1, 2)
        out[:, self.outer.ids] = self._outer_output(faces["outer"])
        return out

    def _outer_output(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 234, C): each outer sensor averages the cells of its footprint.

        The decoder's outer cells predict the normalized value of the sensor owning them (not a
        photon density), so the way back is linear: no exponential of raw decoder outputs, and no
        clamp that could cut the gradient of a badly initialised prediction.
        """
        return torch.stack([self.outer.footprint_mean(grid[:, c]) for c in range(grid.shape[1])], dim=-1)
