"""Fast, bitwise-reproducible Poisson sampling of photoelectrons on (events, sensors) tensors."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

EXACT_POISSON_BELOW = 30.0  # photoelectrons; above, a skew-corrected normal
_POISSON_GRID = 64  # grid means j / 64 photoelectrons
_POISSON_KMAX = 80
_POISSON_GUIDE = 256
_POISSON_LARGE = -128  # guide entry of the rows beyond the exact range


@dataclass(frozen=True)
class _PoissonTables:
    """Poisson CDF rows on a grid of means and a guide for inverting them.

    ``cdf[j, k] = P(n <= k | mu = j / 64)`` for mu up to 30, the last column set to 2 so a search
    always ends. The guide cuts [0, 1) into GUIDE bins: ``guide[j * GUIDE + m]`` (int8) is the
    answer k for every u in [m, m + 1) / GUIDE when the bin holds no step of row j's CDF (most
    bins); ``-1 - k``, k the answer at the bin's lower edge, when it holds one or more; and -128
    on the rows beyond the exact range, so one test finds everything that needs more work.
    """

    cdf: torch.Tensor  # (rows, KMAX) float32
    guide: torch.Tensor  # (rows_with_sentinels * GUIDE,) int8


@cache
def _poisson_tables() -> _PoissonTables:
    rows = int(EXACT_POISSON_BELOW * _POISSON_GRID) + 1
    mu = np.arange(rows)[:, None] / _POISSON_GRID
    k = np.arange(_POISSON_KMAX)[None, :]
    log_fact = np.cumsum(np.log(np.maximum(k, 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = k * np.log(mu) - mu - log_fact
    log_pmf[0] = np.where(k[0] == 0, 0.0, -np.inf)  # mu = 0: all mass at 0
    cdf = np.cumsum(np.exp(log_pmf), axis=1).astype(np.float32)
    cdf[:, -1] = 2.0
    edges = np.arange(_POISSON_GUIDE + 1) / _POISSON_GUIDE
    answer = (cdf[:, None, :] > edges[None, :-1, None]).argmax(-1)  # (rows, GUIDE): at each bin's low edge
    clean = np.take_along_axis(cdf, answer, 1) >= edges[None, 1:]  # the same answer up to the high edge
    guide = np.where(clean, answer, -1 - answer)
    sentinel = np.full((_POISSON_GRID + 2, _POISSON_GUIDE), _POISSON_LARGE)  # mu clamped to 31
    guide = np.concatenate([guide, sentinel]).astype(np.int8)
    return _PoissonTables(torch.from_numpy(cdf), torch.from_numpy(guide.ravel().copy()))


def flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Ascending flat indices (int64) of the True entries of a contiguous bool tensor: the same as
    ``mask.view(-1).nonzero().squeeze(1)``, several times faster on one thread."""
    return torch.from_numpy(np.flatnonzero(mask.numpy()))


def sample_poisson(mu: torch.Tensor, u: torch.Tensor, v: torch.Tensor, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Poisson counts (float32) for a contiguous float32 tensor of means.

    ``u`` and ``v`` are uniforms of mu's shape. Below 30 the draw is exact for a mixture of the
    two grid means around mu (chosen by stochastic rounding with ``v``: the mean is exactly mu,
    the variance exceeds it by at most 1/16384): the row's CDF is inverted at ``u`` through the
    guide table or, for the few u in a bin holding a step, by stepping or searching the row.
    Above, a normal from ``gen`` with the Cornish-Fisher skew term, ``mu + sqrt(mu) z + (z^2 - 1)
    / 6``, rounded.

    Also returns, for entries that drew zero, a fresh uniform independent of everything else (the
    position of u within its guide bin, or within [bin start, P(0)) after a search); elsewhere
    it is meaningless.
    """
    tab = _poisson_tables()
    flat_mu, flat_u = mu.reshape(-1), u.reshape(-1)
    row = torch.add(v.reshape(-1), flat_mu.clamp(0.0, EXACT_POISSON_BELOW + 1.0), alpha=_POISSON_GRID).floor_()
    scaled = flat_u * _POISSON_GUIDE
    bin_ = scaled.floor()
    counts = tab.guide.index_select(0, torch.add(bin_, row, alpha=_POISSON_GUIDE).int()).float()
    fresh = scaled.sub_(bin_)
    special = flat_nonzero(counts < 0)
    if not special.numel():
        return counts.view(mu.shape), fresh.view(mu.shape)
    kind = counts.index_select(0, special)
    large = special.index_select(0, flat_nonzero(kind == _POISSON_LARGE))
    dirty = special.index_select(0, flat_nonzero(kind != _POISSON_LARGE))
    if dirty.numel():  # u fell in a bin holding a step of the CDF: step from its lower edge's answer
        u_d = flat_u.index_select(0, dirty)
        k = counts.index_select(0, dirty).neg_().sub_(1.0)
        row_d = row.index_select(0, dirty).long()
        at = row_d * _POISSON_KMAX + k.long()  # flat cdf index
        p_first = tab.cdf.view(-1).index_select(0, at)
        step = u_d >= p_first
        k.add_(step)
        again = flat_nonzero(step)
        if again.numel():  # a second step; a bin with more than two steps is searched in full
            u_a = u_d.index_select(0, again)
            step = u_a >= tab.cdf.view(-1).index_select(0, at.index_select(0, again).add_(1))
            k.index_add_(0, again, step.float())
            rest = flat_nonzero(step)
            if rest.numel():
                which = again.index_select(0, rest)
                rows = tab.cdf.index_select(0, row_d.index_select(0, which))
                k.index_copy_(0, which, (u_a.index_select(0, rest).unsqueeze(1) >= rows).sum(1, dtype=torch.float32))
        counts.index_copy_(0, dirty, k)
        # a zero count here means u lies in [bin start, P(0)): rescale it to a uniform
        start = bin_.index_select(0, dirty).div_(_POISSON_GUIDE)
        fresh.index_copy_(0, dirty, (u_d - start).div_((p_first - start).clamp_min_(1e-12)).clamp_(0.0, 1.0))
    if large.numel():
        m = flat_mu.index_select(0, large)
        z = torch.empty_like(m).normal_(generator=gen)
        value = torch.addcmul(m, m.sqrt(), z).add_(z * z, alpha=1.0 / 6.0).add_(0.5 - 1.0 / 6.0)
        counts.index_copy_(0, large, value.floor_().clamp_min_(0.0))
    return counts.view(mu.shape), fresh.view(mu.shape)


