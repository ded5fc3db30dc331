"""The MAE objective: per-face, per-channel losses over hidden sensors that have ground truth.

Everything is tensor code on the model's device: per-face sums are one matrix product with the
(4760, 6) face one-hot, and the statistics come back as (numerator, denominator) pairs that a
:class:`~xecmae.train.metrics.MetricSums` accumulates without reading them to the host.

Weights (sqrt(npho) for time, (npho + 1)^alpha for npho, per-event intensity weights) enter as
weighted means ``sum(w * l) / sum(w)`` within each face and channel, which is the same as
normalising the weights to mean 1 over the scored sensors of that face.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xecmae.detector.geometry import FACE_NAMES
from xecmae.detector.neighbours import face_onehot
from xecmae.detector.normalize import Normalizer

Stats = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LossSettings:
    """The loss options of ``training.*`` in one immutable bundle."""

    loss_fn: str = "smooth_l1"
    beta: float = 1.0
    npho_weight: float = 1.0
    time_weight: float = 1.0
    time_sqrt_npho_weight: bool = True
    npho_alpha: float | None = None  # (npho + 1)^alpha weighting when set
    intensity_nbins: int | None = None  # per-event reweighting to a uniform intensity when set
    track_mae_rmse: bool = False
    track_metrics: bool = False

    @classmethod
    def from_training(cls, t, *, full_metrics: bool = False) -> LossSettings:
        """From a ``TrainingConfig``; ``full_metrics`` (validation) turns every metric on."""
        return cls(loss_fn=t.loss_fn, beta=t.loss_beta, npho_weight=t.npho_weight, time_weight=t.time.weight,
                   time_sqrt_npho_weight=t.time.use_npho_weight,
                   npho_alpha=t.npho_loss_weight.alpha if t.npho_loss_weight.enabled else None,
                   intensity_nbins=t.intensity_reweighting.nbins if t.intensity_reweighting.enabled else None,
                   track_mae_rmse=t.track_mae_rmse or full_metrics, track_metrics=t.track_metrics or full_metrics)


def point_loss(pred: torch.Tensor, target: torch.Tensor, name: str, beta: float = 1.0) -> torch.Tensor:
    """Elementwise loss: ``mse`` | ``l1`` | ``smooth_l1`` (beta) | ``huber`` (delta = beta)."""
    if name == "mse":
        return (pred - target).square()
    if name == "l1":
        return (pred - target).abs()
    if name == "smooth_l1":
        return F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    if name == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=beta)
    raise ValueError(f"unknown loss_fn {name!r}; choose mse, l1, smooth_l1 or huber")


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """Elementwise Gaussian negative log-likelihood (without the constant), log_var = log sigma^2.

    ``beta`` > 0 is beta-NLL (Seitzer et al. 2022): each term weighted by the detached sigma^(2 beta),
    so badly fitted events do not learn their mean more slowly just because their sigma is large.
    """
    nll = 0.5 * (log_var + (target - mean).square() * torch.exp(-log_var))
    return nll if beta == 0 else nll * torch.exp(beta * log_var).detach()


def per_face_sum(values: torch.Tensor) -> torch.Tensor:
    """(B, 4760, C) -> (6, C) sums over events and the sensors of each face."""
    return torch.einsum("bnc,nf->fc", values, face_onehot(values.dtype, values.device))


def intensity_weights(total_npho: torch.Tensor, nbins: int) -> torch.Tensor:
    """Per-event weights making the batch's total-npho distribution uniform, (B,) -> (B,), mean 1.

    The bins are the batch's own ``nbins`` quantiles, so each holds the same number of events;
    a bin's weight is then proportional to its width, i.e. the share a uniform distribution
    over the observed range would give it.
    """
    levels = torch.linspace(0, 1, nbins + 1, device=total_npho.device, dtype=total_npho.dtype)
    edges = torch.quantile(total_npho, levels)
    widths = edges.diff()
    span = (edges[-1] - edges[0]).clamp_min(torch.finfo(total_npho.dtype).tiny)
    weight_of_bin = nbins * widths / span
    bins = torch.bucketize(total_npho, edges[1:-1], right=True)
    weights = weight_of_bin[bins]
    return weights / weights.mean().clamp_min(torch.finfo(weights.dtype).tiny)


def scoring_weights(x: torch.Tensor, valid: torch.Tensor, hidden: torch.Tensor, normalizer: Normalizer,
                    settings: LossSettings, channels: int) -> torch.Tensor:
    """(B, 4760, C) weight of every sensor and channel in the loss; 0 = not scored."""
    photons = normalizer.npho_inverse(torch.where(valid[..., 0], x[..., 0], 0.0)).clamp_min(0)  # (B, N)
    scored = hidden.unsqueeze(-1) & valid[..., :channels]  # (B, N, C)
    weights = [torch.ones_like(photons) if settings.npho_alpha is None else (photons + 1).pow(settings.npho_alpha)]
    if channels > 1:
        weights.append(photons.sqrt() if settings.time_sqrt_npho_weight else torch.ones_like(photons))
    w = torch.stack(weights, dim=-1) * scored
    if settings.intensity_nbins is not None:
        total = (photons * valid[..., 0]).sum(dim=1)  # (B,)
        w = w * intensity_weights(total, settings.intensity_nbins)[:, None, None]
    return w


def mae_loss(pred: torch.Tensor, x: torch.Tensor, valid: torch.Tensor, hidden: torch.Tensor,
             normalizer: Normalizer, settings: LossSettings,
             channel_log_var: torch.Tensor | None = None) -> tuple[torch.Tensor, Stats]:
    """Loss of a reconstruction ``pred`` (B, 4760, C) of the normalized input ``x`` (B, 4760, 2).

    Returns the scalar objective and the statistics named as in the specification's metrics
    table, each as a (numerator, denominator) pair of device tensors.
    """
    channels = pred.shape[-1]
    names = ("npho", "time")[:channels]
    target = x[..., :channels].float()
    pred = pred.float()
    w = scoring_weights(x.float(), valid, hidden, normalizer, settings, channels)  # (B, N, C)
    loss = point_loss(pred, target, settings.loss_fn, settings.beta)  # (B, N, C)
    face_channel = per_face_sum(w * loss) / per_face_sum(w).clamp_min(1e-12)  # (6, C) weighted means
    channel_loss = face_channel.sum(dim=0)  # (C,) summed over faces
    if channel_log_var is None:
        weights = (settings.npho_weight, settings.time_weight)[:channels]  # Python numbers: no host-device copy
        total = channel_loss[0] * weights[0]
        for c in range(1, channels):
            total = total + channel_loss[c] * weights[c]
    else:  # homoscedastic: 1 / (2 sigma^2) L + log sigma, sigma^2 = exp(log_var), once per channel
        total = (0.5 * torch.exp(-channel_log_var) * channel_loss + 0.5 * channel_log_var).sum()

    events = pred.new_full((), float(pred.shape[0]))  # filled on the device
    maskable = valid[..., 0]
    stats: Stats = {
        "total_loss": (total.detach() * events, events),
        "actual_mask_ratio": ((hidden & maskable).sum().float(), maskable.sum().float()),
    }
    for c, name in enumerate(names):
        stats[f"loss_{name}"] = (channel_loss[c].detach() * events, events)
    if settings.track_metrics:
        face_total = face_channel.detach().sum(dim=1)
        for f, face in enumerate(FACE_NAMES):
            stats[f"loss_{face}"] = (face_total[f] * events, events)
            for c, name in enumerate(names):
                stats[f"loss_{face}_{name}"] = (face_channel[f, c].detach() * events, events)
    if settings.track_mae_rmse:
        stats.update(_error_stats(pred.detach(), target, w > 0, names, settings.track_metrics))
    return total, stats


def _error_stats(pred: torch.Tensor, target: torch.Tensor, scored: torch.Tensor, names: tuple[str, ...],
                 per_face: bool) -> Stats:
    """MAE and RMSE over the scored (hidden, with truth) sensors, in normalized units."""
    error = torch.where(scored, pred - target, 0.0)
    count = per_face_sum(scored.float())  # (6, C)
    abs_sum, sq_sum = per_face_sum(error.abs()), per_face_sum(error.square())
    stats: Stats = {}
    for c, name in enumerate(names):
        n = count[:, c].sum()
        stats[f"mae_{name}"] = (abs_sum[:, c].sum(), n)
        stats[f"rmse_{name}"] = (sq_sum[:, c].sum(), n)
        if per_face:
            for f, face in enumerate(FACE_NAMES):
                stats[f"mae_{face}_{name}"] = (abs_sum[f, c], count[f, c])
                stats[f"rmse_{face}_{name}"] = (sq_sum[f, c], count[f, c])
    return stats
