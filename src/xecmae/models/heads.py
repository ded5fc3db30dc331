"""Regression heads that can localise, the in-graph classical estimate they may read, and the log-variance bound.

The specification's head (:class:`xecmae.models.regressor.RegressionHead`) sees the six fused face
tokens, in which every grid face was average-pooled to 4 x 4: the spatial detail a position
measurement needs is gone. :class:`MapHeads` reads the faces' feature maps *before* that pooling
(:meth:`xecmae.models.encoder.XECEncoder.forward_maps`): one learned query per task attends over
every position of every face (keys carry a positional embedding of the cell's position in cm)
and over the six fused tokens, which every task's MLP also reads directly (an attention average
alone forgets the amount of light, i.e. the energy); for ``position`` a soft-argmax on the inner face's map gives
(u, v) as an expectation over the inner cells' (u, v) in cm, to which the network adds a learned
correction (and w). Every geometric table is built once from :mod:`xecmae.detector.geometry`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xecmae.detector import geometry as geo
from xecmae.detector.geometry import FACE_NAMES, HEX_FACES, RECT_FACES
from xecmae.detector.light import solid_angle_fraction
from xecmae.detector.normalize import Normalizer
from xecmae.detector.pointsource import FIT_BLOCK, PointSource, fit_point_source, source_distance
from xecmae.detector.timing import SECONDS_TO_NS, emission_time, flight_time
from xecmae.models.encoder import HEX_DIM
from xecmae.models.faces import outer_pool
from xecmae.models.spec import EncoderConfig, RegressorModelConfig

LOG_VAR_RANGE = (-14.0, 6.0)
"""Bounds of a predicted log-variance in scaled target units (sigma from 1e-3 to 20 target scales)."""
POSITION_SCALE_CM = 100.0  # positions enter the positional embedding in metres
CENTROID_SENSORS = 32
POINTFIT_ITERATIONS = 10
"""Levenberg-Marquardt steps of the in-graph point-source fit (``classical_input: pointfit``): on 256
realistic flat events its median distance from the converged fit was 0.006 / 0.035 cm in u / w after
5 steps and below 0.001 cm after 10, at 2.2 and 3.8 ms per event on one CPU thread."""
LOG_PHOTONS_REF = 13.8  # ln(1e6): the light into 4 pi of a ~50 MeV gamma is about 1e6 photons


def bounded_log_var(raw: torch.Tensor) -> torch.Tensor:
    """A smooth clamp of ``raw`` into :data:`LOG_VAR_RANGE`: the identity well inside, never a zero gradient."""
    lo, hi = LOG_VAR_RANGE
    return hi - F.softplus(hi - (lo + F.softplus(raw - lo)))


# --- geometry of the feature maps ------------------------------------------------------------------
def _face_input_positions(outer_mode: str, outer_fine_pool: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """Position (cm) of every input cell of each face: grids (H, W, 3), top/bottom (73, 3)."""
    pos = geo.sensor_positions()
    grids = {"inner": pos[geo.inner_map()], "us": pos[geo.lateral_map("us")], "ds": pos[geo.lateral_map("ds")]}
    fine = torch.tensor(pos[geo.outer_fine_map()]).permute(2, 0, 1)[None]  # (1, 3, 45, 72)
    grids["outer"] = F.avg_pool2d(fine, outer_pool(outer_mode, outer_fine_pool))[0].permute(1, 2, 0).numpy()
    grids |= {face: pos[geo.hex_ids(face)] for face in HEX_FACES}
    return grids


def stage2_centres(positions: np.ndarray) -> torch.Tensor:
    """(H, W, 3) input cell positions -> (H' W', 3): the centre of each ConvNeXt stage-2 cell's footprint.

    Follows the backbone's geometry: the stem (kernel 4, stride 1, padding 1) and the downsampling
    (kernel 2, stride 2) become average pools of the positions over the same windows.
    """
    grid = torch.tensor(positions, dtype=torch.float64).permute(2, 0, 1)[None]  # (1, 3, H, W)
    grid = F.avg_pool2d(grid, 4, stride=1, padding=1, count_include_pad=False)  # (1, 3, H-1, W-1)
    grid = F.avg_pool2d(grid, 2)  # (1, 3, H', W')
    return grid[0].flatten(1).T.float()  # (H' W', 3)


def key_positions(spec: EncoderConfig) -> dict[str, torch.Tensor]:
    """Position (cm) of every position a :class:`MapHeads` attends to, per face: (N_face, 3)."""
    inputs = _face_input_positions(spec.outer_mode, spec.outer_fine_pool)
    out = {face: stage2_centres(inputs[face]) for face in RECT_FACES}
    out |= {face: torch.tensor(inputs[face], dtype=torch.float32) for face in HEX_FACES}
    return out


# --- the classical estimate fed to the heads ----------------------------------------------------------
class ClassicalEstimate(nn.Module):
    """(B, 4760, 2) normalized input + validity -> (B, features): an in-graph classical estimate.

    ``start_columns`` names the tasks the heads predict as the estimate plus a learned correction:
    ``(task, first, end, scale)`` each, the estimate's columns ``first:end`` times ``scale`` being the
    task's start in the truth's units.
    """

    features: int
    start_columns: tuple[tuple[str, int, int, float], ...] = ()

    def starts(self, estimate: torch.Tensor) -> dict[str, torch.Tensor]:
        """{task: (B, size)} in the truth's units: the values the heads correct."""
        return {task: estimate[:, a:b] * scale for task, a, b, scale in self.start_columns}


class CentroidEstimate(ClassicalEstimate):
    """(B, 4760, 2) normalized input + validity -> (B, 5) a cheap classical estimate, in-graph.

    No start: the centroid is a hint, not a starting point.

    The light-weighted centroid (u, v, w) of the :data:`CENTROID_SENSORS` brightest valid sensors
    (divided by 10 cm), their light-weighted RMS distance from it (a depth hint, / 10 cm) and
    ``log(1 + total npho) - 10`` over the valid sensors. The centroid of wall sensors lies inside
    the cylinder, so its w is biased; the heads learn the correction.
    """

    features = 5

    def __init__(self, normalizer: Normalizer, sensors: int = CENTROID_SENSORS):
        super().__init__()
        self.normalizer = normalizer
        self.sensors = sensors
        self.register_buffer("positions", torch.tensor(geo.sensor_positions(), dtype=torch.float32),
                             persistent=False)  # (4760, 3) cm

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        use = valid[..., 0]
        photons = self.normalizer.npho_inverse(torch.where(use, x[..., 0].float(), 0.0)).clamp_min(0) * use
        top, index = photons.topk(self.sensors, dim=1)  # (B, k) each
        weight = top / top.sum(1, keepdim=True).clamp_min(1e-6)  # (B, k)
        where = self.positions[index]  # (B, k, 3) cm
        centre = (weight[..., None] * where).sum(1)  # (B, 3)
        spread = (weight * (where - centre[:, None]).square().sum(-1)).sum(1).clamp_min(1e-6).sqrt()  # (B,)
        total = photons.sum(1)  # (B,)
        return torch.cat([geo.xyz_to_uvw(centre) / 10.0, spread[:, None] / 10.0,
                          torch.log1p(total)[:, None] - 10.0], dim=1)  # (B, 5)


class PointFitEstimate(ClassicalEstimate):
    """(B, 4760, 2) normalized input + validity -> (B, 6) the classical point-source fit, in-graph.

    :func:`~xecmae.detector.pointsource.fit_point_source` of the ideal light model to the valid
    sensors, :data:`POINTFIT_ITERATIONS` steps from the light-weighted centroid (float64, no
    gradient, no read-back to the host, so it exports): the fitted (u, v, w) / 10 cm, the log of
    its intensity and of the coverage-corrected light ``total / sum Omega`` (both minus
    :data:`LOG_PHOTONS_REF`), and ``log(chi2 / sensors)``, how point-like the light looked. The
    heads predict the position as the fit (in cm) plus a learned correction, so the
    network learns what the linear calibration of the classical estimate learns, and more.
    """

    features = 6
    start_columns = (("position", 0, 3, 10.0),)  # cm

    def __init__(self, normalizer: Normalizer, iterations: int = POINTFIT_ITERATIONS):
        super().__init__()
        self.normalizer = normalizer
        self.iterations = iterations

    def fit_features(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, PointSource, torch.Tensor]:
        """The (B, 6) features, the fit itself and the (B, S) float64 photons of the valid sensors."""
        use = valid[..., 0]
        photons = self.normalizer.npho_inverse(torch.where(use, x[..., 0].float(), 0.0)).double()  # (B, S)
        block = FIT_BLOCK if photons.device.type == "cpu" else None  # small blocks stay in a CPU's cache
        fit = fit_point_source(photons, use, iterations=self.iterations, block=block, settle=False)
        coverage = torch.where(use, solid_angle_fraction(fit.position), 0.0).sum(1)  # (B,)
        light = photons.sum(1).clamp_min(1.0) / coverage.clamp_min(1e-6)  # as the classical total
        quality = fit.chi2.clamp_min(1e-6) / fit.known.clamp_min(1)
        features = torch.cat([geo.xyz_to_uvw(fit.position.float()).double() / 10.0,  # atan2 in float32 (ONNX)
                              torch.stack([fit.intensity.clamp_min(1.0).log() - LOG_PHOTONS_REF,
                                           light.log() - LOG_PHOTONS_REF, quality.log()], 1)], 1)
        return features, fit, photons

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return self.fit_features(x, valid)[0].float()


class PointFitTimeEstimate(PointFitEstimate):
    """:class:`PointFitEstimate` and a 7th feature: the classical time (ns) at the fitted point.

    :func:`~xecmae.detector.timing.emission_time` of the valid sensors' times at the fitted point,
    minus the flight from the target (as the classical time of :mod:`xecmae.analysis.classical`,
    0 for an event without a timed sensor). The timing head predicts it plus a learned correction,
    whose bias learns the estimate's offset from ``timeTruth`` (what the classical calibration
    measures on labelled events; a few tenths of a nanosecond on the simulated detector).
    """

    features = 7
    start_columns = (*PointFitEstimate.start_columns, ("timing", 6, 7, 1.0))  # ns

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            features, fit, photons = self.fit_features(x, valid)
            timed = valid[..., 1]
            time_ns = self.normalizer.time_inverse(torch.where(timed, x[..., 1].float(), 0.0)).double() * SECONDS_TO_NS
            emitted = emission_time(time_ns, photons, timed, source_distance(fit.position))
            at_target = torch.nan_to_num(emitted - flight_time(fit.position), nan=0.0)
            return torch.cat([features, at_target[:, None]], 1).float()


CLASSICAL_INPUTS = {"centroid": CentroidEstimate, "pointfit": PointFitEstimate, "pointfit_time": PointFitTimeEstimate}


def start_tasks(classical_input: str) -> tuple[str, ...]:
    """The tasks that ``model.classical_input`` gives a start to (none for ``none`` and ``centroid``)."""
    estimate = CLASSICAL_INPUTS.get(classical_input)
    return () if estimate is None else tuple(task for task, *_ in estimate.start_columns)


# --- attention pooling over the feature maps ---------------------------------------------------------
class AttentionPool(nn.Module):
    """Learned queries attend over a set of keys: (B, N, d) -> (B, T, d), one pooled vector per query.

    Written with einsum and no batch-sized reshape, so a traced or exported graph keeps a dynamic batch.
    """

    def __init__(self, queries: int, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.queries = nn.Parameter(torch.zeros(queries, heads, dim // heads))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        k = self.key(keys).unflatten(-1, (self.heads, -1))  # (B, N, h, d/h)
        v = self.value(keys).unflatten(-1, (self.heads, -1))  # (B, N, h, d/h)
        scores = torch.einsum("thc,bnhc->bthn", self.queries, k) * k.shape[-1] ** -0.5  # (B, T, h, N)
        pooled = torch.einsum("bthn,bnhc->bthc", scores.softmax(dim=-1), v)  # (B, T, h, d/h)
        return self.out(pooled.flatten(2))  # (B, T, d)


class MapHeads(nn.Module):
    """Per-face feature maps + fused tokens -> {task: (B, out)} scaled targets (and log-variances).

    ``spec`` gives the widths (``encoder_dim``, ``head_hidden``, ``map_dim``) and the outer grid; ``outputs``
    is each task's output width (its target size, twice that with a log-variance); ``extra`` the classical inputs;
    ``position_scale`` the scale (cm) of the position target's u and v, so the soft-argmax's
    expectation in cm is added in the target's own units.
    """

    def __init__(self, spec: RegressorModelConfig, outputs: Mapping[str, int], *, extra: int,
                 position_scale: tuple[float, ...]):
        super().__init__()
        self.tasks = tuple(outputs)
        encoder_dim, hidden, map_dim = spec.encoder_dim, spec.head_hidden, spec.map_dim
        grid_channels = 2 * (encoder_dim // 32)  # ConvNeXt stage-2 width
        positions = key_positions(spec)
        for face in FACE_NAMES:
            self.register_buffer(f"pos_{face}", positions[face] / POSITION_SCALE_CM, persistent=False)
        inner_uvw = geo.xyz_to_uvw(positions["inner"])  # (H' W', 3) cm
        self.register_buffer("inner_uv", inner_uvw[:, :2] / torch.tensor(position_scale), persistent=False)
        self.project = nn.ModuleDict({f: nn.Linear(grid_channels if f in RECT_FACES else HEX_DIM, map_dim)
                                      for f in FACE_NAMES})
        self.project_tokens = nn.Linear(encoder_dim, map_dim)
        self.position_embedding = nn.Sequential(nn.Linear(3, map_dim), nn.GELU(), nn.Linear(map_dim, map_dim))
        self.face_embedding = nn.Parameter(torch.zeros(len(FACE_NAMES) + 1, map_dim))  # the last: fused tokens
        nn.init.trunc_normal_(self.face_embedding, std=0.02)
        self.key_norm = nn.LayerNorm(map_dim)
        # an attention average forgets how much light there was: every head also reads the fused tokens
        self.summary = nn.Sequential(nn.LayerNorm(len(FACE_NAMES) * encoder_dim),
                                     nn.Linear(len(FACE_NAMES) * encoder_dim, map_dim))
        self.pool = AttentionPool(len(self.tasks), map_dim, max(1, map_dim // 16))  # heads of 16
        self.mlps = nn.ModuleDict({
            task: nn.Sequential(nn.Linear(2 * map_dim + extra, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                nn.Linear(hidden, width)) for task, width in outputs.items()})
        self.heatmap = None
        if "position" in outputs and "position" not in start_tasks(spec.classical_input):  # a fit starts better
            self.heatmap = nn.Sequential(nn.Conv2d(grid_channels, map_dim, 3, padding=1), nn.GELU(),
                                         nn.Conv2d(map_dim, 1, 1))
            nn.init.zeros_(self.heatmap[-1].weight)  # starts uniform: the expectation is the face's centre
            nn.init.zeros_(self.heatmap[-1].bias)

    def keys(self, tokens: torch.Tensor, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Every face position and the fused tokens as keys: (B, N_positions + 6, map_dim)."""
        parts = []
        for f, face in enumerate(FACE_NAMES):
            m = maps[face]
            cells = m.flatten(2).transpose(1, 2) if face in RECT_FACES else m  # (B, N_face, C)
            where = self.position_embedding(getattr(self, f"pos_{face}"))  # (N_face, map_dim)
            parts.append(self.project[face](cells) + where + self.face_embedding[f])
        parts.append(self.project_tokens(tokens) + self.face_embedding[-1])  # (B, 6, map_dim)
        return self.key_norm(torch.cat(parts, dim=1))

    def soft_argmax_uv(self, inner_map: torch.Tensor) -> torch.Tensor:
        """(B, C, H', W') inner-face map -> (B, 2) expected (u, v) over its cells, in target units."""
        prob = self.heatmap(inner_map).flatten(1).softmax(dim=1)  # (B, H' W')
        return prob @ self.inner_uv  # (B, 2)

    def forward(self, tokens: torch.Tensor, maps: dict[str, torch.Tensor],
                extra: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        with torch.autocast(tokens.device.type, enabled=False):  # physics outputs stay in fp32
            tokens = tokens.float()
            maps = {face: m.float() for face, m in maps.items()}
            keys = self.keys(tokens, maps)  # (B, N, d)
            pooled = self.pool(keys)  # (B, T, d)
            summary = self.summary(tokens.flatten(1))  # (B, d)
            out = {}
            for t, task in enumerate(self.tasks):
                features = [pooled[:, t], summary] + ([] if extra is None else [extra.float()])
                out[task] = self.mlps[task](torch.cat(features, dim=1))  # (B, 2 d + extra) -> (B, out)
            if self.heatmap is not None:
                uv = self.soft_argmax_uv(maps["inner"])  # (B, 2)
                position = out["position"]
                out["position"] = torch.cat([position[:, :2] + uv, position[:, 2:]], dim=1)
            return out
