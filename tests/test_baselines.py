"""Classical baselines: exact where the answer is known, consistent with the generator's light model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xecmae.analysis import baselines as bl
from xecmae.detector import geometry as geo
from xecmae.detector.neighbours import apply_weights
from xecmae.simulate import OPTICAL_SPEED, expected_photons

FACES = geo.face_of_sensor()

# sources inside the xenon: shallow at the centre, deep, near the upstream wall, near the top plane
SOURCES = np.array([[-66.5, 0.0, 0.0], [-95.0, 8.0, 5.0], [-72.0, -10.0, -28.0], [-38.0, 62.0, 10.0]])


def random_hidden(shape, ratio: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < ratio


def test_solid_angle_is_the_event_generators_light_model():
    photons = expected_photons(SOURCES, np.full(len(SOURCES), 10.0)).astype(np.float64)  # 10 MeV each
    ours = 10.0 * 40_000.0 * bl.solid_angle_fraction(torch.tensor(SOURCES)).numpy()
    lit = photons > 1.0
    # the generator works in float32, whose 1/d - 1/q loses ~0.3% for a small MPPC 100 cm away
    np.testing.assert_allclose(ours[lit], photons[lit], rtol=1e-2)
    assert ((ours == 0) == (photons == 0)).all()  # the same sensors face away


def test_solid_angle_gradient_matches_finite_differences():
    source = torch.tensor(SOURCES)
    _, grad = bl.solid_angle_fraction(source, grad=True)
    for k in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[k] = 1e-5
        numeric = (bl.solid_angle_fraction(source + step) - bl.solid_angle_fraction(source - step)) / 2e-5
        torch.testing.assert_close(grad[:, k], numeric, rtol=1e-5, atol=1e-12)


def test_neighbour_weights_stay_within_a_face_and_radius():
    weights = bl.neighbour_weights()
    rows = torch.repeat_interleave(torch.arange(geo.N_SENSORS), weights.crow_indices().diff()).numpy()
    cols = weights.col_indices().numpy()
    assert (FACES[rows] == FACES[cols]).all() and (rows != cols).all()
    dist = np.linalg.norm(geo.sensor_positions()[rows] - geo.sensor_positions()[cols], axis=1)
    assert dist.max() < bl.NEIGHBOUR_RADIUS
    np.testing.assert_allclose(weights.values().numpy(), dist ** -bl.NEIGHBOUR_POWER)
    assert bl.neighbour_weights(20, 2) is bl.neighbour_weights()  # built once


@pytest.mark.parametrize("ratio", [0.6, 0.9])
@pytest.mark.parametrize("power", [0.0, 2.0])
def test_neighbour_average_is_exact_for_uniform_light(ratio, power):
    level = np.array([300.0, 80.0, 120.0, 950.0, 40.0, 55.0])  # photons per face
    values = np.tile(level[FACES], (4, 1)) * np.array([1.0, 2.0, 0.5, 3.0])[:, None]  # 4 events
    valid = ~random_hidden(values.shape, 0.03, seed=1)
    hidden = random_hidden(values.shape, ratio, seed=2) & valid
    known = valid & ~hidden
    no_face_fully_hidden = all(known[:, geo.face_of_sensor() == f].any(1).all() for f in range(len(geo.FACE_NAMES)))
    assert no_face_fully_hidden
    values_seen = np.where(known, values, np.nan)  # hidden and dead values must not matter
    pred = bl.neighbour_average(values_seen, known, power=power).numpy()
    np.testing.assert_allclose(pred, values, rtol=1e-12)
    if ratio > 0.8:  # some sensors had no known neighbour: the face mean took over
        assert (apply_weights(bl.neighbour_weights(power=power), torch.tensor(known, dtype=torch.float64)) == 0).any()


def point_source_event(hidden_ratio: float = 0.6):
    source = torch.tensor(SOURCES)
    intensity = torch.tensor([4e5, 1.5e6, 8e5, 1e6], dtype=torch.float64)  # photons into 4 pi
    npho = intensity[:, None] * bl.solid_angle_fraction(source)  # (4, S)
    valid = ~random_hidden(npho.shape, 0.02, seed=3)
    hidden = random_hidden(npho.shape, hidden_ratio, seed=4) & valid
    return source, intensity, npho.numpy(), valid, hidden


def test_point_source_fit_recovers_a_noiseless_source():
    source, intensity, npho, valid, hidden = point_source_event()
    fit = bl.fit_point_source(np.where(hidden, -1.0, npho), valid & ~hidden)
    np.testing.assert_allclose(fit.position.numpy(), source.numpy(), atol=1e-3)  # cm
    np.testing.assert_allclose(fit.intensity.numpy(), intensity.numpy(), rtol=1e-4)
    bright = hidden & (npho >= 100)
    assert bright.sum() > 1000
    rel = np.abs(fit.npho().numpy()[bright] / npho[bright] - 1)
    assert rel.max() < 1e-3


def test_point_source_fit_of_the_generators_light_starts_far_and_converges():
    photons = expected_photons(SOURCES, np.full(len(SOURCES), 20.0)).astype(np.float64)
    hidden = random_hidden(photons.shape, 0.6, seed=5)
    start = np.tile([-85.0, 0.0, 0.0], (len(SOURCES), 1))  # the detector centre, not the centroid
    fit = bl.fit_point_source(photons, ~hidden, start=start)
    bright = hidden & (photons >= 100)
    assert np.abs(fit.npho().numpy()[bright] / photons[bright] - 1).max() < 1e-2
    np.testing.assert_allclose(fit.position.numpy(), SOURCES, atol=0.05)


def test_solid_angle_average_is_exact_for_a_point_source():
    source, _, npho, valid, hidden = point_source_event()
    known = valid & ~hidden
    pred = bl.solid_angle_average(np.where(known, npho, np.nan), known, source, "npho").numpy()
    lit = npho > 0
    np.testing.assert_allclose(pred[lit], npho[lit], rtol=1e-9)
    assert np.abs(pred[~lit]).max() == 0.0  # facing away: no direct light
    # times: emission at t0 plus the optical path; neighbours' paths are removed, the sensor's added back
    t0 = np.array([[3.0], [-1.0], [0.5], [7.0]])  # ns
    distance = np.linalg.norm(geo.sensor_positions()[None] - np.asarray(source)[:, None], axis=-1)  # (B, 4760) cm
    time = t0 + distance / OPTICAL_SPEED
    known_t = known & (npho >= 100)
    pred_t = bl.solid_angle_average(np.where(known_t, time, np.nan), known_t, source, "time").numpy()
    np.testing.assert_allclose(pred_t, time, rtol=0, atol=1e-9)


def test_predict_runs_every_baseline_and_is_exact_on_a_noiseless_source():
    _, _, npho, valid, hidden = point_source_event()
    known = valid & ~hidden
    threads = torch.get_num_threads()
    out = bl.predict(np.where(known, npho, -1.0), known)
    assert torch.get_num_threads() == threads
    assert set(out) == set(bl.BASELINES)
    assert all(set(per) == {"npho"} for per in out.values())  # no time given: npho only
    bright = hidden & (npho >= 100)
    for name in ("solid_angle_avg", "point_source_fit"):
        assert np.abs(out[name]["npho"].numpy()[bright] / npho[bright] - 1).max() < 1e-3, name
    time = np.zeros_like(npho)
    out = bl.predict(npho, known, time, known)
    assert set(out["neighbour_avg"]) == {"npho", "time"} and "time" not in out["point_source_fit"]
    assert out["solid_angle_avg"]["time"].shape == npho.shape
