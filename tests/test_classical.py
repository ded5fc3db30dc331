"""Classical estimators: exact on the ideal light model, calibrated on labelled events only, near the truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xecmae.analysis.calibration import ClassicalCalibration, fit_calibration, robust_lstsq
from xecmae.analysis.classical import classical_features
from xecmae.detector import geometry as geo
from xecmae.detector.light import OPTICAL_SPEED
from xecmae.detector.normalize import DEAD_VALUE
from xecmae.detector.timing import bright_time
from xecmae.errors import UserError
from xecmae.simulate import EventGenerator, expected_photons
from xecmae.train.resolution import resolution_metrics

SOURCES = np.array([[-70.0, 5.0, 3.0], [-90.0, -12.0, -15.0], [-75.0, 20.0, 25.0]])  # cm, inside the xenon


def test_bright_time_removes_the_optical_path_and_ignores_outliers():
    rng = np.random.default_rng(0)
    distance = torch.from_numpy(rng.uniform(2.0, 80.0, (3, 200)))
    t0 = torch.tensor([[-2.0], [0.5], [10.0]], dtype=torch.float64)
    time = t0 + distance / OPTICAL_SPEED
    time[:, :5] += 7.0  # five late sensors (scattered light, noise) among the brightest
    npho = torch.from_numpy(rng.uniform(600.0, 5000.0, (3, 200)))
    npho[:, :5] = 10_000.0
    usable = torch.ones(3, 200, dtype=torch.bool)
    usable[2] = False  # an event without a usable time
    est = bright_time(time, npho, usable, distance)
    torch.testing.assert_close(est[:2], t0[:2, 0], rtol=0, atol=1e-9)
    assert torch.isnan(est[2])


def test_coverage_corrects_the_light_for_dead_sensors():
    """Noise-free ideal light of a point source: the fit finds it, and total / coverage is its
    intensity whichever sensors are dead, while the plain total falls with them."""
    energy = np.full(len(SOURCES), 50.0)
    npho = np.repeat(expected_photons(SOURCES, energy), 2, axis=0).astype(np.float64)  # each source twice
    dead = np.zeros_like(npho, bool)
    dead[1::2, geo.face_sensor_ids("inner")[::3]] = True  # a third of the inner face, in every second copy
    npho[dead] = DEAD_VALUE
    time = np.zeros_like(npho)
    f = classical_features(npho, time)
    truth = np.repeat(np.asarray(geo.xyz_to_uvw(SOURCES)), 2, axis=0)
    np.testing.assert_allclose(f.uvw, truth, atol=0.02)
    light = f.total / f.coverage
    np.testing.assert_allclose(light, 50.0 * 40_000.0, rtol=5e-3)  # photons into 4 pi
    assert (f.total[1::2] < 0.9 * f.total[0::2]).all()


def test_robust_lstsq_ignores_outliers():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 2))
    design = np.column_stack([np.ones(500), x])
    y = design @ np.array([1.0, 2.0, -3.0]) + rng.normal(0, 0.01, 500)
    y[:25] += 50.0  # 5% failed measurements
    np.testing.assert_allclose(robust_lstsq(design, y), [1.0, 2.0, -3.0], atol=5e-3)
    plain, *_ = np.linalg.lstsq(design, y, rcond=None)
    assert abs(plain[0] - 1.0) > 1.0  # which plain least squares would not


@pytest.fixture(scope="module")
def ideal_sets():
    """Labelled (calibration) and scored events of the ideal detector, flat 15-60 MeV, different seeds."""
    out = {}
    for name, seed, n in (("labelled", 21, 256), ("scored", 22, 128)):
        ev = EventGenerator("flat:15:60", seed=seed, detector="ideal").generate(n)
        out[name] = (classical_features(ev["npho"], ev["relative_time"]), ev)
    return out


def test_calibrated_estimates_are_near_the_truth_of_unseen_events(ideal_sets, tmp_path):
    feats, labelled = ideal_sets["labelled"]
    scored_feats, scored = ideal_sets["scored"]
    cal = fit_calibration(feats, labelled["uvwTruth"], labelled["energyTruth"], labelled["timeTruth"], "labelled")
    assert cal.events == 256
    est = cal.apply(scored_feats)
    m = resolution_metrics("position", est["position"], scored["uvwTruth"].astype(np.float64))
    m |= resolution_metrics("energy", est["energy"], scored["energyTruth"][:, None].astype(np.float64))
    m |= resolution_metrics("timing", est["timing"], scored["timeTruth"][:, None].astype(np.float64))
    # measured on these sets: u 0.31, v 0.21, w 0.95 cm, energy 5.4% (2.8% for w > 2 cm), time 0.10 ns
    assert m["position_res_u_cm"] < 0.5 and m["position_res_v_cm"] < 0.4 and m["position_res_w_cm"] < 1.5
    assert max(abs(m[f"position_bias_{a}_cm"]) for a in "uvw") < 0.3
    assert m["energy_res_rel"] < 0.07 and abs(m["energy_bias_rel"]) < 0.015
    deep = scored["uvwTruth"][:, 2] > 2.0
    deep_energy = resolution_metrics("energy", est["energy"][deep], scored["energyTruth"][deep, None].astype(float))
    assert deep_energy["energy_res_rel"] < 0.04
    assert m["timing_res_ns"] < 0.2 and abs(m["timing_bias_ns"]) < 0.05
    # the uncalibrated fit sits deeper than the first interaction; the calibration removes that
    raw_w = np.median(scored_feats.uvw[:, 2] - scored["uvwTruth"][:, 2])
    assert raw_w > 1.0 and abs(m["position_bias_w_cm"]) < 0.3 * raw_w
    # saved as plain JSON and read back, it gives the same estimates
    again = ClassicalCalibration.load(cal.save(tmp_path / "cal.json")).apply(scored_feats)
    for task, values in est.items():
        np.testing.assert_allclose(again[task], values, rtol=1e-12)


def test_calibration_refuses_too_few_events_and_foreign_files(ideal_sets, tmp_path):
    feats, labelled = ideal_sets["labelled"]
    with pytest.raises(UserError, match="at least"):
        fit_calibration(feats.subset(slice(0, 5)), labelled["uvwTruth"][:5], labelled["energyTruth"][:5],
                        labelled["timeTruth"][:5])
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="not a classical calibration"):
        ClassicalCalibration.load(tmp_path / "other.json")
