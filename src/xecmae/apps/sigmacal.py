"""Calibration of a regressor's per-event sigma on labelled events: pulls of width 1.

A network trained with the Gaussian NLL on residuals with tails (a late conversion, a shower
leaking out) widens its sigma to cover them, so the pulls (pred - truth) / sigma of the bulk come
out narrower than 1 (0.7-0.9 for energy and u). A physicist wants a sigma whose 68% interval holds
68% of the events, so each component's sigma is multiplied by one number: the 68% half width of
its pulls on labelled events inside the fiducial volume (temperature scaling of the uncertainty,
Kuleshov et al. 2018, Laves et al. 2020). One number per component keeps the event-to-event
ordering the network learned and leaves every prediction unchanged.

The labelled events should be ones the training did not see (its validation file): on training
events the residuals are smaller than on new ones, and so is the scale. The scales go into a copy
of the checkpoint (``sigma_calibration``), which every command applies when it loads the model
(:func:`xecmae.apps.trained.load_trained`): ``predict``'s sigma branches, ``validate``'s pulls, the
exported ONNX graph.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from xecmae.apps.events import EventSource
from xecmae.apps.trained import SIGMA_CALIBRATION, load_trained
from xecmae.apps.validate import collect, fiducial
from xecmae.errors import UserError
from xecmae.train.checkpoint import load_checkpoint, save_checkpoint
from xecmae.train.resolution import COMPONENTS, half_width_68

log = logging.getLogger(__name__)

MIN_EVENTS = 50
"""Fewest fiducial events a scale is fitted on (its relative statistical error is about 0.94 / sqrt(N))."""


def pull_widths(pred: np.ndarray, truth: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(N, size) predictions, truths and sigmas in one unit -> (size,) 68% half widths of the pulls."""
    pulls = (pred - truth) / sigma
    return np.array([half_width_68(pulls[:, k]) for k in range(pulls.shape[1])])


def energy_bin_edges(predicted_energy: np.ndarray, bins: int) -> np.ndarray:
    """(bins - 1,) GeV edges holding equal numbers of the events' predicted energies (none for one bin)."""
    return np.quantile(predicted_energy, np.arange(1, bins) / bins) if bins > 1 else np.zeros(0)


def energy_bin(data: dict[str, Any], edges: np.ndarray, events: int) -> np.ndarray:
    """(events,) bin of each event's predicted energy, as the model bins it: above an edge is the bin above it."""
    if not edges.size:  # one bin; a model without an energy task has no predicted energy to read
        return np.zeros(events, int)
    return (data["pred"]["energy"][:, :1] > edges).sum(1)


def fitted_scales(data: dict[str, Any], inside: np.ndarray, edges: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
    """Per Gaussian task, (bins, size): the factors that make its pulls on the ``inside`` events 1 wide,
    in each bin of predicted energy (``edges`` GeV; none: one bin)."""
    edges = np.zeros(0) if edges is None else edges
    bin_of = energy_bin(data, edges, len(inside))
    scales = {}
    for task, sigma in data["sigma"].items():
        rows = []
        for b in range(edges.size + 1):
            keep = inside & (bin_of == b)
            if int(keep.sum()) < MIN_EVENTS:
                raise UserError(f"energy bin {b} has {int(keep.sum())} fiducial calibration events; at least "
                                f"{MIN_EVENTS} are needed for a 68% width (fewer --energy-bins or more events)")
            widths = pull_widths(data["pred"][task][keep], data["truth"][task][keep], sigma[keep])
            if not np.all(np.isfinite(widths) & (widths > 0)):
                raise UserError(f"{task}: the pulls of the calibration events have no finite width "
                                f"({widths.tolist()})")
            rows.append(widths)
        scales[task] = np.stack(rows)
    return scales


def calibrate(checkpoint: str | Path, source: EventSource, output: str | Path, *, chunk_events: int,
              batch_size: int, device: str = "cpu", energy_bins: int = 1) -> dict[str, Any]:
    """Fit the sigma scales of ``checkpoint`` on the labelled events of ``source``; write the copy to ``output``.

    ``energy_bins`` > 1 fits one scale per component in each of that many bins of the predicted
    energy (equal numbers of events). A calibration replaces any the checkpoint had: the pulls are
    measured with the sigma as trained. Returns the report: events used, and per component (and
    bin) the scale and the pull width before and after.
    """
    output = Path(output)
    if output.resolve() == Path(checkpoint).resolve():
        raise UserError(f"--output {output} is the checkpoint itself; write the calibrated copy elsewhere")
    if energy_bins < 1:
        raise UserError(f"--energy-bins must be at least 1, got {energy_bins}")
    trained = load_trained(checkpoint, ("regressor",), "sigma calibration", device)
    tasks = tuple(getattr(trained.model, "gaussian_tasks", ()))
    if not tasks:
        raise UserError(f"{checkpoint}: no task of this regressor was trained with gaussian_nll, so it gives no "
                        "sigma to calibrate (training.task_loss_fn: {position: gaussian_nll, ...})")
    if energy_bins > 1 and "energy" not in trained.model.tasks:
        raise UserError(f"{checkpoint}: --energy-bins bins by the predicted energy, and this regressor has no "
                        f"energy task ({', '.join(trained.model.tasks)})")
    trained.model.calibrate_sigma({})  # measured against the sigma as trained
    data = collect(trained, source, chunk_events, batch_size, device, classical=False)
    inside = fiducial(data["uvw"], trained.cfg.validation.fiducial)
    n = int(inside.sum())
    if n < MIN_EVENTS * energy_bins:
        raise UserError(f"{n} of {len(inside)} calibration events are inside the fiducial volume; "
                        f"at least {MIN_EVENTS} per energy bin are needed for a 68% width")
    if n < 1000 * energy_bins:
        log.warning("%d fiducial events in %d bin(s): each scale is known to about %.0f%%", n, energy_bins,
                    100 * 0.94 / np.sqrt(n / energy_bins))
    edges = energy_bin_edges(data["pred"]["energy"][inside, 0], energy_bins) if energy_bins > 1 else np.zeros(0)
    scales = fitted_scales(data, inside, edges)
    ckpt = load_checkpoint(checkpoint)
    ckpt[SIGMA_CALIBRATION] = {"scales": {t: v.tolist() for t, v in scales.items()},
                               "energy_edges_gev": edges.tolist(), "events": n, "inputs": data["files"],
                               "fiducial_cuts_cm": trained.cfg.validation.fiducial.model_dump()}
    save_checkpoint(ckpt, output)
    bin_of = energy_bin(data, edges, len(inside))
    rows = []
    for task in tasks:  # the width after is measured with the scaled sigma, not assumed
        scaled = data["sigma"][task] * scales[task][bin_of]
        for b in range(len(edges) + 1):
            keep = inside & (bin_of == b)
            after = pull_widths(data["pred"][task][keep], data["truth"][task][keep], scaled[keep])
            rows += [{"task": task, "component": component, "bin": b, "scale": float(scales[task][b, k]),
                      "pull_width_before": float(scales[task][b, k]), "pull_width_after": float(after[k])}
                     for k, component in enumerate(COMPONENTS[task])]
    log.info("calibrated sigma of %s on %d fiducial events -> %s", ", ".join(tasks), n, output)
    return {"checkpoint": str(checkpoint), "output": str(output), "events": n, "read": len(inside),
            "rows": rows, "scales": ckpt[SIGMA_CALIBRATION]["scales"], "energy_edges_gev": edges.tolist()}


def format_report(report: dict[str, Any]) -> str:
    """The calibration as a small table: one line per component (and energy bin)."""
    edges_mev = [1000 * e for e in report["energy_edges_gev"]]
    bounds = [-np.inf, *edges_mev, np.inf]
    lines = [f"sigma calibration on {report['events']} fiducial events (of {report['read']} read)",
             f"{'task':10s} {'component':9s} {'predicted energy':>17s} {'scale':>7s} {'pull width before':>18s} "
             f"{'after':>6s}"]
    for r in report["rows"]:
        component = r["component"] if r["task"] != "energy" else ""  # the energy pull is of E, not E / E_true
        lo, hi = bounds[r["bin"]], bounds[r["bin"] + 1]
        span = ("all" if not edges_mev else f"< {hi:.1f} MeV" if lo == -np.inf else f"> {lo:.1f} MeV"
                if hi == np.inf else f"{lo:.1f}-{hi:.1f} MeV")
        lines.append(f"{r['task']:10s} {component:9s} {span:>17s} {r['scale']:7.3f} {r['pull_width_before']:18.3f} "
                     f"{r['pull_width_after']:6.3f}")
    lines.append(f"calibrated checkpoint written to {report['output']}")
    return "\n".join(lines)
