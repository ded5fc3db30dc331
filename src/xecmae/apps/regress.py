"""Running a trained regressor over events: raw sensors in, physical quantities out.

Per task the regressor's scaled targets are decoded to the units of the truth branches
(:data:`xecmae.models.regressor.TASK_TARGETS`): position (u, v, w) in cm, energy in GeV,
time in ns, angles (theta, phi) in degrees. :data:`OUTPUT_BRANCHES` names how each becomes
branches of a prediction file, beside the truth branch it estimates; a task trained with the
Gaussian NLL also has its per-event sigma, in the same units (:data:`SIGMA_BRANCHES`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from xecmae.detector.geometry import uvw_to_xyz
from xecmae.models.regressor import LOG_VAR, TASK_TARGETS

SIGMA = "_sigma"  # key suffix of a task's per-event uncertainty in :func:`regress`'s output

OUTPUT_BRANCHES: dict[str, dict[str, str]] = {
    "position": {"uvwPred": "cm, (u, v, w) as uvwTruth", "uPred": "cm", "vPred": "cm", "wPred": "cm",
                 "xyzPred": "cm, the position in x, y, z"},
    "energy": {"energyPred": "GeV, as energyTruth", "energyPredMeV": "MeV"},
    "timing": {"timePred": "ns, as timeTruth"},
    "angle": {"emiAngPred": "deg, (theta, phi) as emiAng", "thetaPred": "deg", "phiPred": "deg"},
}
"""Branches a prediction file has per task, with their units."""
SIGMA_BRANCHES: dict[str, dict[str, str]] = {
    "position": {"uvwSigma": "cm, per-event sigma of (u, v, w)", "uSigma": "cm", "vSigma": "cm", "wSigma": "cm"},
    "energy": {"energySigma": "GeV, per-event sigma of energyPred", "energySigmaMeV": "MeV"},
    "timing": {"timeSigma": "ns, per-event sigma of timePred"},
    "angle": {"emiAngSigma": "deg, per-event sigma of (theta, phi)", "thetaSigma": "deg", "phiSigma": "deg"},
}
"""The uncertainty branches of a task trained with ``gaussian_nll``, with their units."""


def output_units(model: torch.nn.Module) -> dict[str, str]:
    """Every branch a prediction file of ``model`` has beyond the copied truth, with its unit."""
    units = {name: unit for task in model.tasks for name, unit in OUTPUT_BRANCHES[task].items()}
    return units | {name: unit for task in getattr(model, "gaussian_tasks", ())
                    for name, unit in SIGMA_BRANCHES[task].items()}


@torch.no_grad()
def regress(model: torch.nn.Module, npho: np.ndarray, time: np.ndarray, batch_size: int,
            device: torch.device) -> dict[str, np.ndarray]:
    """Raw (N, 4760) npho (photons) and relative_time (s) -> {task: (N, size)} in physical units, and
    ``{task}_sigma`` (N, size) for the tasks with a per-event uncertainty."""
    norm = model.normalizer
    x, valid = norm(torch.from_numpy(npho), torch.from_numpy(time))  # (N, 4760, 2) each
    gaussian = tuple(getattr(model, "gaussian_tasks", ()))
    parts: dict[str, list[np.ndarray]] = {key: [] for key in (*model.tasks, *(t + SIGMA for t in gaussian))}
    for start in range(0, len(npho), batch_size):
        out = model(x[start:start + batch_size].to(device), valid[start:start + batch_size].to(device))
        for task in model.tasks:
            parts[task].append(TASK_TARGETS[task].decode(out[task].float()).cpu().numpy())
        for task in gaussian:
            parts[task + SIGMA].append(TASK_TARGETS[task].decode_sigma(out[task + LOG_VAR].float()).cpu().numpy())
    return {key: np.concatenate(p) if p else np.zeros((0, TASK_TARGETS[key.removesuffix(SIGMA)].size), np.float32)
            for key, p in parts.items()}


def prediction_branches(pred: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{task: (N, size)} physical -> the branches of :data:`OUTPUT_BRANCHES` (float32)."""
    out: dict[str, np.ndarray] = {}
    if "position" in pred:
        uvw = pred["position"].astype(np.float32)
        out |= {"uvwPred": uvw, "uPred": uvw[:, 0], "vPred": uvw[:, 1], "wPred": uvw[:, 2],
                "xyzPred": np.asarray(uvw_to_xyz(uvw), dtype=np.float32)}
    if "energy" in pred:
        gev = pred["energy"][:, 0].astype(np.float32)
        out |= {"energyPred": gev, "energyPredMeV": gev * np.float32(1000.0)}
    if "timing" in pred:
        out["timePred"] = pred["timing"][:, 0].astype(np.float32)
    if "angle" in pred:
        angle = pred["angle"].astype(np.float32)
        out |= {"emiAngPred": angle, "thetaPred": angle[:, 0], "phiPred": angle[:, 1]}
    out |= sigma_branches(pred)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def sigma_branches(pred: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{task_sigma: (N, size)} physical -> the branches of :data:`SIGMA_BRANCHES` (float32)."""
    out: dict[str, np.ndarray] = {}
    for task, names in SIGMA_BRANCHES.items():
        if task + SIGMA not in pred:
            continue
        sigma = pred[task + SIGMA].astype(np.float32)
        vector, *components = names
        out[vector] = sigma if sigma.shape[1] > 1 else sigma[:, 0]
        if task == "energy":
            out["energySigmaMeV"] = sigma[:, 0] * np.float32(1000.0)
        elif len(components) == sigma.shape[1]:
            out |= {name: sigma[:, k] for k, name in enumerate(components)}
    return out


def truth_of(task: str, chunk: dict[str, np.ndarray]) -> np.ndarray:
    """The truth of ``task`` from a chunk of input arrays, (N, size) float64."""
    spec = TASK_TARGETS[task]
    return np.asarray(chunk[spec.branch], dtype=np.float64).reshape(-1, spec.size)


def regressed_chunks(model: torch.nn.Module, chunks: Iterator[dict[str, np.ndarray]], batch_size: int,
                     device: torch.device) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """(input chunk, predictions) for every chunk."""
    for chunk in chunks:
        yield chunk, regress(model, chunk["npho"], chunk["time"], batch_size, device)
