"""Each loss option against small cases computed by hand."""

import math

import numpy as np
import pytest
import torch

from xecmae.detector import geometry as geo
from xecmae.detector.normalize import Normalizer
from xecmae.train.losses import LossSettings, intensity_weights, mae_loss
from xecmae.train.metrics import MetricSums

NORM = Normalizer()
INNER_A, INNER_B = 10, 20  # two inner MPPCs
US_A = 4308  # an upstream PMT
DIM = 30  # an inner MPPC with 50 photons: valid npho, invalid time


def event(photons: dict[int, float] | None = None, default: float = 200.0):
    npho = torch.full((1, geo.N_SENSORS), default)
    for sensor, value in (photons or {}).items():
        npho[0, sensor] = value
    npho[0, DIM] = 50.0
    return NORM(npho, torch.full_like(npho, 2e-8))


def prediction(x, errors: dict[int, tuple[float, float]]):
    pred = x.clone()
    for sensor, (e_npho, e_time) in errors.items():
        pred[0, sensor, 0] += e_npho
        pred[0, sensor, 1] += e_time
    return pred


def hidden_of(*sensors: int) -> torch.Tensor:
    hidden = torch.zeros(1, geo.N_SENSORS, dtype=torch.bool)
    hidden[0, list(sensors)] = True
    return hidden


def loss_of(settings: LossSettings, errors, hidden, photons=None, log_var=None):
    x, valid = event(photons)
    total, stats = mae_loss(prediction(x, errors), x, valid, hidden, NORM, settings, log_var)
    return total.item(), {k: (n / d).item() if d > 0 else None for k, (n, d) in stats.items()}


@pytest.mark.parametrize("name,beta,expected", [
    ("mse", 1.0, (0.5**2 + 2.0**2) / 2),
    ("l1", 1.0, (0.5 + 2.0) / 2),
    ("smooth_l1", 0.5, ((0.5 - 0.25) + (2.0 - 0.25)) / 2),  # |e| >= beta: |e| - beta / 2
    ("smooth_l1", 1.0, (0.5 * 0.25 / 1.0 + (2.0 - 0.5)) / 2),  # 0.5 e^2 / beta below beta
    ("huber", 0.5, (0.5 * 0.25 + 0.5 * (2.0 - 0.25)) / 2),  # delta (|e| - delta / 2) above delta
])
def test_point_losses_average_over_hidden_sensors(name, beta, expected):
    settings = LossSettings(loss_fn=name, beta=beta, time_weight=0.0)
    total, stats = loss_of(settings, {INNER_A: (0.5, 0.0), INNER_B: (2.0, 0.0)}, hidden_of(INNER_A, INNER_B))
    assert total == pytest.approx(expected, rel=1e-5)
    assert stats["loss_npho"] == pytest.approx(expected, rel=1e-5)


def test_visible_sensors_do_not_count():
    settings = LossSettings(loss_fn="l1", time_weight=0.0)
    errors = {INNER_A: (1.0, 0.0), INNER_B: (7.0, 0.0)}  # INNER_B is visible
    total, _ = loss_of(settings, errors, hidden_of(INNER_A))
    assert total == pytest.approx(1.0)


def test_faces_are_averaged_separately_then_summed():
    settings = LossSettings(loss_fn="l1", time_weight=0.0, track_metrics=True)
    errors = {INNER_A: (1.0, 0.0), INNER_B: (3.0, 0.0), US_A: (0.5, 0.0)}
    total, stats = loss_of(settings, errors, hidden_of(INNER_A, INNER_B, US_A))
    assert stats["loss_inner_npho"] == pytest.approx(2.0)
    assert stats["loss_us_npho"] == pytest.approx(0.5)
    assert total == pytest.approx(2.5)
    assert stats["loss_outer"] == pytest.approx(0.0)


def test_channel_weights_multiply_the_channel_losses():
    errors = {INNER_A: (1.0, 0.5), INNER_B: (1.0, 0.5)}
    hidden = hidden_of(INNER_A, INNER_B)
    plain = LossSettings(loss_fn="l1", time_sqrt_npho_weight=False)
    weighted = LossSettings(loss_fn="l1", npho_weight=2.0, time_weight=3.0, time_sqrt_npho_weight=False)
    assert loss_of(plain, errors, hidden)[0] == pytest.approx(1.0 + 0.5)
    assert loss_of(weighted, errors, hidden)[0] == pytest.approx(2.0 * 1.0 + 3.0 * 0.5)


def test_time_loss_is_weighted_by_sqrt_npho_and_skips_dim_sensors():
    photons = {INNER_A: 400.0, INNER_B: 100.0}
    errors = {INNER_A: (0.0, 1.0), INNER_B: (0.0, 4.0), DIM: (0.0, 100.0)}  # DIM has no valid time
    hidden = hidden_of(INNER_A, INNER_B, DIM)
    weighted = LossSettings(loss_fn="l1", npho_weight=0.0)
    flat = LossSettings(loss_fn="l1", npho_weight=0.0, time_sqrt_npho_weight=False)
    assert loss_of(weighted, errors, hidden, photons)[0] == pytest.approx((20 * 1.0 + 10 * 4.0) / 30, rel=1e-4)
    assert loss_of(flat, errors, hidden, photons)[0] == pytest.approx((1.0 + 4.0) / 2)


def test_dim_sensors_are_still_scored_on_npho():
    settings = LossSettings(loss_fn="l1", time_weight=0.0)
    total, _ = loss_of(settings, {DIM: (0.8, 0.0)}, hidden_of(DIM))
    assert total == pytest.approx(0.8)


def test_npho_loss_weight_uses_npho_plus_one_to_the_alpha():
    photons = {INNER_A: 99.0, INNER_B: 399.0}
    errors = {INNER_A: (1.0, 0.0), INNER_B: (2.0, 0.0)}
    settings = LossSettings(loss_fn="l1", time_weight=0.0, npho_alpha=0.5)
    expected = (10 * 1.0 + 20 * 2.0) / 30  # (99 + 1)^0.5 = 10, (399 + 1)^0.5 = 20
    assert loss_of(settings, errors, hidden_of(INNER_A, INNER_B), photons)[0] == pytest.approx(expected, rel=1e-4)


def test_intensity_weights_make_the_intensity_distribution_uniform():
    weights = intensity_weights(torch.tensor([1.0, 2.0, 3.0, 10.0]), nbins=2)
    # quantile edges 1, 2.5, 10: bin widths 1.5 and 7.5 of a span of 9
    torch.testing.assert_close(weights, torch.tensor([1.5, 1.5, 7.5, 7.5]) * 2 / 9)
    assert weights.mean() == pytest.approx(1.0)


def test_intensity_reweighting_changes_how_events_count():
    npho = torch.full((2, geo.N_SENSORS), 100.0)
    npho[1] *= 10  # a brighter second event
    x, valid = NORM(npho, torch.full_like(npho, 2e-8))
    pred = x.clone()
    pred[0, INNER_A, 0] += 1.0
    pred[1, INNER_A, 0] += 3.0
    hidden = torch.zeros(2, geo.N_SENSORS, dtype=torch.bool)
    hidden[:, INNER_A] = True
    plain = LossSettings(loss_fn="l1", time_weight=0.0)
    reweighted = LossSettings(loss_fn="l1", time_weight=0.0, intensity_nbins=2)
    assert mae_loss(pred, x, valid, hidden, NORM, plain)[0].item() == pytest.approx(2.0)
    # two events, two bins: each event fills one bin of equal width -> equal weights
    assert mae_loss(pred, x, valid, hidden, NORM, reweighted)[0].item() == pytest.approx(2.0)
    npho3 = torch.cat([npho, npho[1:] * 1.01])
    x3, valid3 = NORM(npho3, torch.full_like(npho3, 2e-8))
    pred3 = x3.clone()
    pred3[:, INNER_A, 0] += torch.tensor([1.0, 3.0, 3.0])
    hidden3 = torch.zeros(3, geo.N_SENSORS, dtype=torch.bool)
    hidden3[:, INNER_A] = True
    w = intensity_weights((npho3 * valid3[..., 0]).sum(1), 2)
    expected = float((w * torch.tensor([1.0, 3.0, 3.0])).sum() / w.sum())
    assert mae_loss(pred3, x3, valid3, hidden3, NORM, reweighted)[0].item() == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(7.0 / 3)


def test_homoscedastic_weighting_learns_one_log_variance_per_channel():
    errors = {INNER_A: (1.0, 0.5), US_A: (3.0, 0.5)}
    settings = LossSettings(loss_fn="l1", time_sqrt_npho_weight=False)
    log_var = torch.tensor([math.log(4.0), 0.0], requires_grad=True)
    total, _ = loss_of(settings, errors, hidden_of(INNER_A, US_A), log_var=log_var)
    l_npho, l_time = 1.0 + 3.0, 0.5 + 0.5  # summed over the two faces
    expected = 0.5 / 4.0 * l_npho + 0.5 * math.log(4.0) + 0.5 * l_time
    assert total == pytest.approx(expected, rel=1e-5)


def test_npho_only_mode_has_no_time_statistics():
    x, valid = event()
    pred = prediction(x, {INNER_A: (1.0, 0.0)})[..., :1]
    _, stats = mae_loss(pred, x, valid, hidden_of(INNER_A), NORM, LossSettings(track_metrics=True,
                                                                               track_mae_rmse=True))
    assert stats and not [k for k in stats if "time" in k]
    assert stats["mae_inner_npho"][1] == 1  # one scored sensor, counted once


def test_error_metrics_count_scored_sensors_per_face():
    settings = LossSettings(loss_fn="l1", track_mae_rmse=True, track_metrics=True)
    errors = {INNER_A: (1.0, 0.0), INNER_B: (-3.0, 0.0), US_A: (2.0, 0.0)}
    _, stats = loss_of(settings, errors, hidden_of(INNER_A, INNER_B, US_A))
    assert stats["mae_npho"] == pytest.approx(2.0)
    assert stats["rmse_npho"] == pytest.approx((1 + 9 + 4) / 3)  # mean square; sqrt taken when read
    sums = MetricSums()
    x, valid = event()
    sums.add(mae_loss(prediction(x, errors), x, valid, hidden_of(INNER_A, INNER_B, US_A), NORM, settings)[1])
    values = sums.compute()
    assert values["rmse_npho"] == pytest.approx(np.sqrt(14 / 3))
    assert values["mae_inner_npho"] == pytest.approx(2.0) and values["mae_us_npho"] == pytest.approx(2.0)
    assert "mae_outer_npho" not in values  # nothing hidden there: no value rather than 0/0
    assert values["actual_mask_ratio"] == pytest.approx(3 / geo.N_SENSORS)
