"""How the reconstruction degrades with dead channels, and how much filling them back wins.

The same held-out events are reconstructed with a fraction of the sensors dead (0, 1, 5 and 10%
by default, on top of what the files and ``--dead-channels`` already mark), every method seeing
the very same dead channels:

- ``sentinel``: the regressor, the dead channels left as they are (invalid, the sentinels);
- ``neighbour``: the regressor after filling them by the neighbour average
  (:func:`xecmae.apps.filling.neighbour_fill`);
- ``inpainter``: the regressor after filling them by a trained inpainter (when one is given);
- ``dead_trained``: a second regressor, fine-tuned with random dead channels
  (``training.dead_channels``), dead channels left as sentinels (when one is given);
- ``dead_trained_inpainter``: that second regressor after the inpainter fill (when both are given):
  what the inpainter leaves wrong, the training with dead channels may have learned to discount;
- ``classical``: the point-source fit and the calibrated total npho
  (:mod:`xecmae.apps.classical`) with the dead channels dropped.

The dead maps are the generator's (:func:`~xecmae.simulate.deadmaps.clustered_dead_mask`, whole
readout boards and scattered channels, or ``random``): at each fraction a bank of ``maps`` maps,
map k being the generator's map of (seed, run k), event i taking map i mod ``maps``. Filling
changes only the dead channels; every other one reaches the regressor bit for bit.

Figures per (fraction, method): the resolution (68% half width) of u, v, w (cm) and of the
relative energy, each with a bootstrap error, inside the fiducial volume on the true first
interaction (:class:`xecmae.config.FiducialConfig`). ``ratio`` divides by the plain regressor
(``sentinel``) without added dead channels, the no-dead-channel figure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xecmae.analysis.classical import classical_features
from xecmae.apps.classical import calibrated_energy, total_npho
from xecmae.apps.events import EventSource
from xecmae.apps.filling import inpainter_fill, neighbour_fill
from xecmae.apps.regress import regress
from xecmae.apps.trained import check_run_options, load_trained
from xecmae.apps.validate import check_output_dir, fiducial, validation_config
from xecmae.data.deadchannels import apply_dead_channels
from xecmae.data.spec import CHUNK_EVENTS
from xecmae.errors import UserError
from xecmae.models.regressor import TASK_TARGETS
from xecmae.simulate.deadmaps import clustered_dead_mask, random_dead_mask
from xecmae.train.resolution import half_width_68

log = logging.getLogger(__name__)

FRACTIONS = (0.0, 0.01, 0.05, 0.1)
MAPS = 32
BOOTSTRAP = 200
METHODS = ("sentinel", "neighbour", "inpainter", "dead_trained", "dead_trained_inpainter", "classical")
METHOD_LABELS = {"sentinel": "regressor, dead left as sentinels", "neighbour": "regressor, neighbour-average fill",
                 "inpainter": "regressor, inpainter fill", "dead_trained": "regressor trained with dead channels",
                 "dead_trained_inpainter": "regressor trained with dead channels, inpainter fill",
                 "classical": "classical, dead dropped"}
FIGURES = {"u": ("position", 0), "v": ("position", 1), "w": ("position", 2), "energy": ("energy", 0)}
"""Figure -> (task, component); energy is relative to the true energy."""
UNITS = {"u": "cm", "v": "cm", "w": "cm", "energy": "relative"}


def dead_map_bank(fraction: float, kind: str = "clustered", seed: int = 0, maps: int = MAPS) -> np.ndarray:
    """(maps, 4760) bool: the generator's dead maps of (seed, run k), k = 0 .. maps - 1."""
    if kind not in ("clustered", "random"):
        raise UserError(f"dead maps must be 'clustered' or 'random', got {kind!r}")
    draw = clustered_dead_mask if kind == "clustered" else random_dead_mask
    return np.stack([draw(float(fraction), seed, k) for k in range(maps)])


def parse_fractions(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0,0.01,0.05"`` -> (0.0, 0.01, 0.05); each in [0, 1), at least one (a :class:`UserError` otherwise)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(float(v) for v in items if str(v).strip())
    except ValueError:
        raise UserError(f"--dead-fractions: {text!r} is not a comma-separated list of numbers") from None
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if not values or bad:
        raise UserError(f"--dead-fractions: give fractions in [0, 1), e.g. 0,0.01,0.05,0.1 (got {text!r})")
    return values


def read_events(source: EventSource, tasks: Sequence[str], chunk_events: int, max_events: int | None
                ) -> dict[str, np.ndarray]:
    """Raw npho, time, run and the truth of every task (and uvwTruth, energyTruth), at most ``max_events``."""
    branches = sorted({TASK_TARGETS[t].branch for t in tasks} | {"uvwTruth", "energyTruth"})
    planned = source.plan(need_truth=branches)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("npho", "time", "run", *branches)}
    read = 0
    for chunk in source.chunks(planned, chunk_events):
        take = len(chunk["npho"]) if max_events is None else min(len(chunk["npho"]), max_events - read)
        for key in parts:
            parts[key].append(np.asarray(chunk[key])[:take])
        read += take
        if max_events is not None and read >= max_events:
            break
    return {k: np.concatenate(v) for k, v in parts.items()}


def bootstrap_width(residual: np.ndarray, rounds: int = BOOTSTRAP, seed: int = 0) -> float:
    """Standard deviation of the 68% half width over bootstrap resamples of the events."""
    if residual.size < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    sample = residual[rng.integers(0, residual.size, (rounds, residual.size))]
    lo, hi = np.percentile(sample, [16, 84], axis=1)
    return float(np.std((hi - lo) / 2))


def residuals(pred: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{figure: (N,) residual} of u, v, w (cm) and the relative energy, for the tasks the predictions have."""
    out = {}
    for name, (task, k) in FIGURES.items():
        if task in pred:
            residual = pred[task][:, k] - truth[task][:, k]
            out[name] = residual / truth[task][:, k] if task == "energy" else residual
    return out


def figures(residual: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{figure: {res, err, bias}}: the 68% half width, its bootstrap error and the median of each residual."""
    return {name: {"res": half_width_68(r), "err": bootstrap_width(r), "bias": float(np.median(r))}
            for name, r in residual.items()}


def paired_ratio_error(residual: np.ndarray, reference: np.ndarray, rounds: int = BOOTSTRAP, seed: int = 0) -> float:
    """Bootstrap error of half_width_68(residual) / half_width_68(reference) on the same events.

    Both are resampled with the same event indices, so what the two share (the events) cancels:
    the ratio's error is smaller than the two figures' errors added, and says whether a method
    really moved the resolution.
    """
    if residual.size < 2 or residual.size != reference.size:
        return float("nan")
    pick = np.random.default_rng(seed).integers(0, residual.size, (rounds, residual.size))

    def widths(r: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(r[pick], [16, 84], axis=1)
        return (hi - lo) / 2

    width, ref = widths(residual), widths(reference)
    ok = ref > 0  # a resample of a few events can repeat one event: no width to divide by
    return float(np.std(width[ok] / ref[ok])) if ok.any() else float("nan")


def _regressed(model, npho, time, batch_size, device) -> dict[str, np.ndarray]:
    return {t: v.astype(np.float64) for t, v in regress(model, npho, time, batch_size, device).items()}


def evaluate_level(events: dict[str, np.ndarray], dead: np.ndarray, models: dict[str, Any], batch_size: int,
                   device, classical: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """{method: {task: (N, size) physical}} with the ``dead`` (N, 4760) channels dead for every method."""
    dev = torch.device(device)
    npho, time = apply_dead_channels(events["npho"], events["time"], dead)
    regressor = models["sentinel"]
    out = {"sentinel": _regressed(regressor, npho, time, batch_size, dev)}
    filled_npho, filled_time, _ = neighbour_fill(npho, time, regressor.normalizer)
    out["neighbour"] = _regressed(regressor, filled_npho, filled_time, batch_size, dev)
    inpainted = None
    if models.get("inpainter") is not None:
        inpainted = inpainter_fill(models["inpainter"], npho, time, batch_size, dev)[:2]
        out["inpainter"] = _regressed(regressor, *inpainted, batch_size, dev)
    if models.get("dead_trained") is not None:
        out["dead_trained"] = _regressed(models["dead_trained"], npho, time, batch_size, dev)
        if inpainted is not None:
            out["dead_trained_inpainter"] = _regressed(models["dead_trained"], *inpainted, batch_size, dev)
    if classical:
        norm = regressor.normalizer
        estimate = {"position": classical_features(npho, time, norm).uvw}
        energy, _ = calibrated_energy(total_npho(npho, time, norm), events["energyTruth"].astype(np.float64))
        estimate["energy"] = energy[:, None]
        out["classical"] = estimate
    return out


def robustness(checkpoint: str | Path, inputs, out_dir: str | Path, *, source: EventSource | None = None,
               fractions: Sequence[float] = FRACTIONS, inpainter: str | Path | None = None,
               dead_trained: str | Path | None = None, map_kind: str = "clustered", seed: int = 0,
               maps_per_level: int = MAPS,
               max_events: int | None = None, cuts: dict[str, float] | None = None, config: dict | None = None,
               chunk_events: int = CHUNK_EVENTS, batch_size: int = 256, device: str = "cpu", classical: bool = True,
               plots: bool = True) -> dict[str, Any]:
    """Write ``robustness.json``, ``robustness.md`` and ``robustness.png`` into ``out_dir``; returns the report."""
    from xecmae.apps.robustness_report import write_report

    out_dir = Path(out_dir)
    check_run_options(chunk_events, batch_size, device)
    check_output_dir(out_dir)
    if max_events is not None and max_events <= 0:
        raise UserError(f"--max-events must be positive, got {max_events}")
    if maps_per_level <= 0:
        raise UserError(f"the number of dead maps per fraction must be positive, got {maps_per_level}")
    fractions = parse_fractions(fractions)
    dead_map_bank(0.0, map_kind, seed, 1)  # the kind of map is checked before any model is loaded
    source = source or EventSource(inputs)
    trained = load_trained(checkpoint, ("regressor",), "a robustness report", device)
    if not {"position", "energy"} & set(trained.model.tasks):
        raise UserError(f"{checkpoint}: the robustness report needs a position or energy regressor, "
                        f"this one has {', '.join(trained.model.tasks)}")
    models: dict[str, Any] = {"sentinel": trained.model}
    notes = []
    if inpainter is not None:
        from xecmae.apps.fill import load_inpainter

        models["inpainter"] = load_inpainter(inpainter, torch.device(device))
    else:
        notes.append("no inpainter given (--inpainter CKPT): the inpainter fill is not measured")
    if dead_trained is not None:
        models["dead_trained"] = load_trained(dead_trained, ("regressor",), "a robustness report", device).model
    cfg = validation_config(trained, config, cuts)
    tasks = sorted(set(trained.model.tasks) | set(getattr(models.get("dead_trained"), "tasks", ())))
    events = read_events(source, tasks, chunk_events, max_events)
    inside = fiducial(events["uvwTruth"].astype(np.float64).reshape(-1, 3), cfg.fiducial)
    if not inside.any():
        raise UserError(f"no event inside the fiducial volume ({cfg.fiducial.model_dump()}) of {len(inside)} events")
    events = {k: v[inside] for k, v in events.items()}
    n = len(events["npho"])
    truth = {t: np.asarray(events[TASK_TARGETS[t].branch], np.float64).reshape(n, -1) for t in tasks}
    base_dead = ~trained.normalizer.validity(events["npho"], events["time"])[0]
    levels = []
    reference: dict[str, np.ndarray] = {}  # the plain regressor's residuals without added dead channels
    for fraction in fractions:
        dead = dead_map_bank(fraction, map_kind, seed, maps_per_level)[np.arange(n) % maps_per_level]
        log.info("dead fraction %g: %d events", fraction, n)
        preds = evaluate_level(events, dead, models, batch_size, device, classical)
        kept = {m: residuals(p, truth) for m, p in preds.items()}
        if fraction == 0.0 and not reference:
            reference = kept["sentinel"]
        levels.append({"fraction": fraction, "dead_total_mean": float((dead | base_dead).mean()),
                       "methods": {m: figures(r) for m, r in kept.items()}, "residuals": kept})
    result = {"checkpoint": trained.describe(), "inpainter": str(inpainter) if inpainter else None,
              "dead_trained": str(dead_trained) if dead_trained else None,
              "events": {"read": len(inside), "fiducial": n}, "fiducial_cuts_cm": cfg.fiducial.model_dump(),
              "dead_maps": {"kind": map_kind, "seed": seed, "maps_per_fraction": maps_per_level,
                            "already_dead_mean": float(base_dead.mean())},
              "methods": {m: METHOD_LABELS[m] for m in METHODS if m in levels[0]["methods"]},
              "units": UNITS, "notes": notes, "levels": levels}
    add_ratios(result)
    for level in levels:  # the events are the same at every fraction: the ratio's error is a paired one
        for method, kept in level.pop("residuals").items():
            for name, fig in level["methods"][method].items():
                fig["ratio_err"] = (paired_ratio_error(kept[name], reference[name])
                                    if name in reference else float("nan"))
    out_dir.mkdir(exist_ok=True)
    result["files"] = [str(p) for p in write_report(result, out_dir, plots)]
    return result


def add_ratios(result: dict[str, Any]) -> None:
    """``ratio`` beside every figure: the figure over the plain regressor's without added dead channels."""
    zero = next((lv for lv in result["levels"] if lv["fraction"] == 0.0), None)
    reference = zero["methods"].get("sentinel", {}) if zero else {}
    for level in result["levels"]:
        for figs in level["methods"].values():
            for name, fig in figs.items():
                ref = reference.get(name, {}).get("res")
                fig["ratio"] = fig["res"] / ref if ref else float("nan")
