"""XECRegressor: the shared encoder and one small head per reconstruction task.

By default (``model.head: tokens``, the specification's head) every head is an MLP on all six
face tokens (concatenated); ``head: maps`` reads the faces' feature maps instead
(:class:`xecmae.models.heads.MapHeads`). Heads predict targets in scaled units (see
:data:`TASK_TARGETS`) so every task's loss is of order one; a task trained with ``gaussian_nll``
also predicts a log-variance per component, output as ``{task}_log_var``, to which the
calibration of its sigma on labelled events is added (:meth:`XECRegressor.calibrate_sigma`; none
until a checkpoint says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from xecmae.detector.geometry import FACE_NAMES
from xecmae.detector.normalize import Normalizer
from xecmae.models.encoder import EncoderModel, XECEncoder
from xecmae.models.heads import CLASSICAL_INPUTS, MapHeads, bounded_log_var, start_tasks
from xecmae.models.precision import in_fp32
from xecmae.models.spec import TASKS, RegressorModelConfig


@dataclass(frozen=True)
class TaskTarget:
    """How a truth branch becomes a regression target: ``(truth - offset) / scale``."""

    branch: str
    size: int
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    unit: str

    def encode(self, truth: torch.Tensor) -> torch.Tensor:
        t = truth.reshape(-1, self.size).float()  # -1, not len(): a traced graph keeps its batch free
        # column by column with Python numbers: no host-to-device copy of the constants per step
        return torch.stack([(t[:, k] - o) / s for k, (o, s) in enumerate(zip(self.offset, self.scale, strict=True))],
                           dim=1)

    def decode(self, target: torch.Tensor) -> torch.Tensor:
        return torch.stack([target[:, k] * s + o for k, (o, s) in enumerate(zip(self.offset, self.scale,
                                                                                  strict=True))], dim=1)

    def decode_sigma(self, log_var: torch.Tensor) -> torch.Tensor:
        """(B, size) log-variance in scaled units -> sigma in the truth's units."""
        return torch.stack([torch.exp(0.5 * log_var[:, k]) * s for k, s in enumerate(self.scale)], dim=1)


LOG_VAR = "_log_var"  # output key suffix of a task's log-variance, e.g. position_log_var

TASK_TARGETS: dict[str, TaskTarget] = {
    "position": TaskTarget("uvwTruth", 3, (10.0, 10.0, 10.0), (0.0, 0.0, 0.0), "cm"),
    "energy": TaskTarget("energyTruth", 1, (0.05,), (0.0,), "GeV"),
    "timing": TaskTarget("timeTruth", 1, (1.0,), (0.0,), "ns"),
    "angle": TaskTarget("emiAng", 2, (10.0, 10.0), (90.0, 0.0), "deg"),  # (theta, phi)
}
if set(TASK_TARGETS) != set(TASKS):  # a task added to the configuration's Literal and not here, or the reverse
    raise ImportError(f"TASK_TARGETS {sorted(TASK_TARGETS)} and the configuration's tasks {sorted(TASKS)} differ")


class RegressionHead(nn.Module):
    """Six face tokens (B, 6, D) -> (B, out); ``extra`` classical features (B, extra) join the first layer."""

    def __init__(self, encoder_dim: int, hidden: int, out: int, extra: int = 0):
        super().__init__()
        tokens = len(FACE_NAMES) * encoder_dim
        self.mlp = nn.Sequential(nn.LayerNorm(tokens), nn.Linear(tokens, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out))
        self.extra = nn.Linear(extra, hidden) if extra else None

    def forward(self, tokens: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        if self.extra is None:
            return in_fp32(self.mlp, tokens.flatten(1))  # small, and its outputs are energies and positions
        with torch.autocast(tokens.device.type, enabled=False):
            first = self.mlp[:2](tokens.flatten(1).float()) + self.extra(extra.float())  # (B, hidden)
            return self.mlp[2:](first)


class XECRegressor(EncoderModel):
    """Encoder + heads: (B, 4760, 2) values and validity -> {task: (B, size) scaled targets}."""

    def __init__(self, normalizer: Normalizer, spec: RegressorModelConfig, *, gaussian_tasks: tuple[str, ...] = ()):
        """``spec``: the model section whole (the encoder's shape, the tasks and their heads);
        ``gaussian_tasks``: the tasks trained with ``gaussian_nll``, which also predict a log-variance."""
        super().__init__()
        self.tasks = tuple(spec.tasks)
        self.gaussian_tasks = tuple(t for t in self.tasks if t in gaussian_tasks)
        self.head_kind = spec.head
        self.normalizer = normalizer
        self.encoder = XECEncoder(normalizer, spec)
        dim, hidden = spec.encoder_dim, spec.head_hidden
        estimate = CLASSICAL_INPUTS.get(spec.classical_input)
        self.classical = None if estimate is None else estimate(normalizer)
        extra = 0 if estimate is None else estimate.features
        outputs = {t: TASK_TARGETS[t].size * (2 if t in self.gaussian_tasks else 1) for t in self.tasks}
        if spec.head == "tokens":
            self.heads = nn.ModuleDict({t: RegressionHead(dim, hidden, outputs[t], extra) for t in self.tasks})
        else:
            self.heads = MapHeads(spec, outputs, extra=extra, position_scale=TASK_TARGETS["position"].scale[:2])
        for task in set(start_tasks(spec.classical_input)) & set(self.tasks):
            last = (self.heads[task].mlp if spec.head == "tokens" else self.heads.mlps[task])[-1]
            size = TASK_TARGETS[task].size  # untrained, the task is the estimate's (the log-variance is free)
            nn.init.zeros_(last.weight.data[:size])
            nn.init.zeros_(last.bias.data[:size])
        for task in self.gaussian_tasks:  # not in the state dict: a checkpoint carries it beside the weights
            self.register_buffer(f"{task}_log_var_shift", torch.zeros(1, TASK_TARGETS[task].size), persistent=False)
        self.register_buffer("sigma_energy_edges", torch.zeros(0), persistent=False)  # scaled energy units
        self.set_encoder_frozen(spec.freeze_encoder)

    def calibrate_sigma(self, scales: dict[str, list], energy_edges_gev: list[float] = ()) -> None:
        """Multiply each Gaussian task's sigma by ``scales[task]``: (size,) per component, or (bins, size).

        With ``energy_edges_gev`` (bins - 1 increasing energies, GeV) the scale of an event is the one of
        the bin its *predicted* energy falls in, for a sigma whose error depends on the energy. A
        scale is the 68% half width of the pulls on labelled events (:mod:`xecmae.apps.sigmacal`), so
        the calibrated sigma covers 68% of the residuals there; it is a constant per bin, so every
        prediction stays as it is. A calibration replaces the one before; tasks not named get none.
        """
        unknown = sorted(set(scales) - set(self.gaussian_tasks))
        if unknown:
            raise ValueError(f"sigma scales for {unknown}, which this model gives no sigma for "
                             f"(it has {list(self.gaussian_tasks)})")
        edges = torch.as_tensor(list(energy_edges_gev), dtype=torch.float32).reshape(-1)
        bins = edges.numel() + 1
        if bins > 1 and ("energy" not in self.tasks or not bool((edges.diff() > 0).all())):
            raise ValueError(f"energy bins need an energy task and increasing edges, got {edges.tolist()}")
        for task in self.gaussian_tasks:
            size = TASK_TARGETS[task].size
            value = torch.as_tensor(scales.get(task, [1.0] * size), dtype=torch.float32)
            if value.numel() not in (size, bins * size) or not bool((value > 0).all()):
                raise ValueError(f"{task}: {bins} x {size} positive sigma scale(s) needed, got {scales.get(task)}")
            shift = (2.0 * value.log()).reshape(-1, size).expand(bins, size).clone()  # (bins, size)
            self.register_buffer(f"{task}_log_var_shift", shift.to(self.sigma_energy_edges.device), persistent=False)
        scaled = TASK_TARGETS["energy"].encode(edges).reshape(-1) if bins > 1 else edges  # the head's units
        self.register_buffer("sigma_energy_edges", scaled.to(self.sigma_energy_edges.device), persistent=False)

    def _log_var_shift(self, task: str, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        """(1, size) or (B, size): the calibration's shift of ``task``'s log-variance (zero uncalibrated)."""
        shift = getattr(self, f"{task}_log_var_shift")  # (bins, size)
        if self.sigma_energy_edges.numel() == 0:  # a shape, known when the model is built: no host sync
            return shift
        energy = raw["energy"][:, :1].float()  # (B, 1) scaled, the prediction
        return shift[(energy > self.sigma_energy_edges).sum(1)]  # (B, size)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        extra = None if self.classical is None else self.classical(x, valid)  # (B, features)
        if self.head_kind == "maps":
            tokens, maps = self.encoder.forward_maps(x, valid)  # (B, 6, D), {face: map}
            raw = self.heads(tokens, maps, extra)
        else:
            tokens = self.encoder(x, valid)  # (B, 6, D)
            raw = {task: head(tokens, extra) for task, head in self.heads.items()}
        starts = {} if extra is None else self.classical.starts(extra)  # {task: (B, size)} in the truth's units
        for task, start in starts.items():
            if task in raw:  # the head learns the correction to the classical estimate
                size, value = TASK_TARGETS[task].size, raw[task]
                raw[task] = torch.cat([value[:, :size] + TASK_TARGETS[task].encode(start), value[:, size:]], 1)
        if not self.gaussian_tasks:
            return raw
        out = {}
        for task, value in raw.items():
            size = TASK_TARGETS[task].size
            out[task] = value[:, :size]
            if task in self.gaussian_tasks:
                out[task + LOG_VAR] = bounded_log_var(value[:, size:]) + self._log_var_shift(task, raw)
        return out


def build_regressor(cfg) -> XECRegressor:
    """The regressor described by a :class:`xecmae.config.RegressorConfig`."""
    return XECRegressor(cfg.normalizer(), cfg.model, gaussian_tasks=cfg.gaussian_tasks())
