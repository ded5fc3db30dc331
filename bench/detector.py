"""Ideal against realistic detector response: light, scattering and what a classical fit reaches.

    python bench/detector.py            # 1000 calibration + 1000 evaluation events per detector
    python bench/detector.py --quick    # 200 + 200, a smoke test

For each detector (``ideal``, ``realistic``) it simulates 52.8 MeV signal events of one run
(seed, run 1) and prints:

- ``total_npho_median``: the median total npho over the live sensors (published: 6-8e5);
- ``scattered_fraction``: the share of the expected sensor light that reached the sensors
  after scattering (from :meth:`EventGenerator.mean_light`), and ``scattered_budget_fraction``,
  the share of the emitted photons that scattered;
- ``energy_res_rel``: half the central 68% width of the total npho over the live sensors
  divided by a uniformity correction, for w > 2 cm: a quadratic polynomial in the fitted
  position (u, v, w), fitted by least squares to total / median on the calibration half, as a
  conventional reconstruction corrects its light sum; ``energy_res_uncorrected_rel`` without it;
- ``fit_u_cm`` ... ``fit_w_cm``: the point-source fit's position (u, v, w), calibrated linearly
  (truth ~ A [fit u, v, w, 1], least squares) on the first half of the events and scored, as the
  half width of the central 68% of the residuals, on the second half; ``fresnel_fit_*`` the same
  with the MPPC Fresnel correction in the fit.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from xecmae.analysis.baselines import fit_point_source
from xecmae.detector import geometry as geo
from xecmae.detector.threads import single_thread
from xecmae.simulate import EventGenerator
from xecmae.train.resolution import half_width_68

W_MIN_CM = 2.0


def _fit_uvw(events: dict[str, np.ndarray], dead: np.ndarray, fresnel: bool) -> np.ndarray:
    npho = events["npho"].astype(np.float64)
    known = np.isfinite(npho) & (npho < 9e9) & ~dead[None]
    with single_thread():
        fit = fit_point_source(torch.from_numpy(np.where(known, npho, 0.0)), torch.from_numpy(known), fresnel=fresnel)
    return geo.xyz_to_uvw(fit.position.numpy())


def _calibrated_resolution(fit: np.ndarray, truth: np.ndarray, n_cal: int) -> list[float]:
    design = np.concatenate([fit, np.ones((len(fit), 1))], 1)
    coef, *_ = np.linalg.lstsq(design[:n_cal], truth[:n_cal], rcond=None)
    residual = design[n_cal:] @ coef - truth[n_cal:]
    return [round(half_width_68(residual[:, k]), 3) for k in range(3)]


def _quadratic(uvw: np.ndarray) -> np.ndarray:
    u, v, w = uvw.T
    return np.stack([np.ones_like(u), u, v, w, u * u, v * v, w * w, u * v, u * w, v * w], 1)


def _energy_resolution(total: np.ndarray, fit: np.ndarray, deep: np.ndarray, n_cal: int) -> float:
    """68% half width of total / f(fitted position) - 1 on the evaluation half, f fitted on the calibration half."""
    ratio = total / np.median(total[:n_cal][deep[:n_cal]])
    design = _quadratic(fit)
    cal = np.flatnonzero(deep[:n_cal])
    coef, *_ = np.linalg.lstsq(design[cal], ratio[cal], rcond=None)
    ev = n_cal + np.flatnonzero(deep[n_cal:])
    return half_width_68(ratio[ev] / (design[ev] @ coef) - 1.0)


def measure(detector: str, n_cal: int, n_eval: int, seed: int, light_events: int) -> dict[str, float]:
    gen = EventGenerator("signal", seed=seed, detector=detector)
    started = time.perf_counter()
    events = gen.generate(n_cal + n_eval)
    generate_s = time.perf_counter() - started
    alive = ~gen.dead
    total = np.where(alive[None], events["npho"], 0.0).astype(np.float64).sum(1)
    deep = events["uvwTruth"][:, 2] > W_MIN_CM
    uncorrected = total[deep] / np.median(total[deep]) - 1.0
    light = gen.mean_light(light_events)
    expected = light["direct"].sum() + light["scattered"].sum()
    out: dict[str, float] = {
        "total_npho_median": round(float(np.median(total)), -2),
        "scattered_fraction": round(float(light["scattered"].sum() / expected), 4),
        "scattered_budget_fraction": round(float(light["scattered_budget"].sum() / light["emitted"].sum()), 4),
        "absorbed_budget_fraction": round(float(light["absorbed"].sum() / light["emitted"].sum()), 4),
        "energy_res_uncorrected_rel": round(half_width_68(uncorrected), 4),
        "deep_events": int(deep.sum()),
        "generate_s": round(generate_s, 2),
    }
    truth = events["uvwTruth"].astype(np.float64)
    for tag, fresnel in (("fit", False), ("fresnel_fit", True)):
        fit = _fit_uvw(events, gen.dead, fresnel)
        res = _calibrated_resolution(fit, truth, n_cal)
        out |= {f"{tag}_{axis}_cm": value for axis, value in zip("uvw", res, strict=True)}
        if not fresnel:
            out["energy_res_rel"] = round(_energy_resolution(total, fit, deep, n_cal), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="evaluation events per detector")
    parser.add_argument("--calibration", type=int, default=1000, help="labelled events for the linear calibration")
    parser.add_argument("--light-events", type=int, default=256, help="events for the noise-free light figures")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="200 + 200 events")
    args = parser.parse_args(argv)
    n_cal, n_eval = (200, 200) if args.quick else (args.calibration, args.events)
    torch.set_num_threads(1)
    result: dict[str, object] = {"calibration_events": n_cal, "evaluation_events": n_eval, "seed": args.seed}
    for detector in ("ideal", "realistic"):
        for key, value in measure(detector, n_cal, n_eval, args.seed, args.light_events).items():
            result[f"{detector}_{key}"] = value
    result |= {"cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
