import re

import numpy as np
import pytest
import torch

from xecmae.detector.normalize import NPHO_SCHEMES, Normalizer


@pytest.mark.parametrize("scheme", NPHO_SCHEMES)
def test_inverse_recovers_npho_over_the_full_range(scheme):
    norm = Normalizer(npho_scheme=scheme)
    x = np.concatenate([[0.0], np.logspace(-2, 6, 2000)])
    np.testing.assert_allclose(norm.npho_inverse(norm.npho_forward(x)), x, rtol=1e-5, atol=1e-9)
    xt = torch.tensor(x[1:], dtype=torch.float32)
    torch.testing.assert_close(norm.npho_inverse(norm.npho_forward(xt)), xt, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("scheme,expected", [
    ("log1p", np.log1p(2.0) / 4.08), ("anscombe", np.sqrt(2000.375) / np.sqrt(1000.375)),
    ("sqrt", np.sqrt(2.0)), ("linear", 2.0),
])
def test_schemes_follow_their_formulas(scheme, expected):
    assert Normalizer(npho_scheme=scheme).npho_forward(np.array(2000.0)) == pytest.approx(expected)


@pytest.mark.parametrize("scheme", ["log1p", "anscombe", "sqrt"])
def test_values_below_the_domain_become_zero(scheme):
    norm = Normalizer(npho_scheme=scheme)
    below = norm.npho_domain_min - 1.0
    assert norm.npho_forward(np.array([below]))[0] == 0.0
    assert np.isfinite(norm.npho_forward(np.array([norm.npho_domain_min]))[0])


def test_time_transform_and_inverse():
    norm = Normalizer()
    t = np.array([0.0, 1.14e-7, -3e-9])
    np.testing.assert_allclose(norm.time_forward(t), [0.46, 1.46, -3e-9 / 1.14e-7 + 0.46])
    np.testing.assert_allclose(norm.time_inverse(norm.time_forward(t)), t, atol=1e-20)


def test_validity_and_sentinels_for_every_kind_of_bad_value():
    norm = Normalizer()
    npho = np.array([np.nan, np.inf, -np.inf, 1e10, 500.0, 50.0, -10.0, 500.0, 500.0, 500.0], dtype=np.float32)
    time = np.array([1e-8, 1e-8, 1e-8, 1e10, 1e-8, 1e-8, 1e-8, np.nan, 1e10, np.inf], dtype=np.float32)
    x, valid = norm(npho, time)
    expected_npho = [False, False, False, True, True, True, True, True, True, True]
    expected_npho[3] = False  # 1e10 is a dead channel
    expected_time = [False, False, False, False, True, False, False, False, False, False]
    np.testing.assert_array_equal(valid[:, 0], expected_npho)
    np.testing.assert_array_equal(valid[:, 1], expected_time)
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(x[~valid[:, 0], 0], -1.0)
    np.testing.assert_array_equal(x[~valid[:, 1], 1], -1.0)
    # a dim sensor (50 photons) and a slightly negative one keep their npho
    assert x[5, 0] == pytest.approx(np.log1p(0.05) / 4.08)
    assert x[6, 0] == pytest.approx(np.log1p(-0.01) / 4.08, rel=1e-5)


def test_a_real_value_equal_to_the_sentinel_stays_valid():
    norm = Normalizer()
    t = np.array([norm.time_inverse(-1.0)])  # normalizes exactly onto the sentinel
    x, valid = norm(np.array([1000.0]), t)
    assert valid[0, 1] and x[0, 1] == pytest.approx(-1.0)


def test_numpy_and_torch_agree():
    norm = Normalizer(npho_scheme="anscombe")
    rng = np.random.default_rng(1)
    npho = (rng.exponential(300, (4, 4760)) - 5).astype(np.float32)
    time = (rng.normal(0, 2e-8, (4, 4760))).astype(np.float32)
    npho[0, :10] = 1e10
    x_np, v_np = norm(npho, time)
    x_t, v_t = norm(torch.from_numpy(npho), torch.from_numpy(time))
    np.testing.assert_allclose(x_t.numpy(), x_np, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(v_t.numpy(), v_np)
    assert x_np.shape == (4, 4760, 2)


def test_unknown_scheme_is_rejected():
    expected = "npho_scheme: input should be 'log1p', 'anscombe', 'sqrt' or 'linear', got 'log2'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        Normalizer(npho_scheme="log2")


def test_the_normalization_section_is_the_normalizer_spec():
    """The YAML section has the normaliser's fields, defaults and checks (written once, in Normalizer)."""
    from dataclasses import asdict

    from xecmae.config import MAEConfig, NormalizationConfig

    assert asdict(MAEConfig().normalizer()) == asdict(Normalizer())
    assert set(NormalizationConfig.model_fields) == set(asdict(Normalizer())) - {"npho_threshold"}
    for bad in ({"npho_scale": 0.0}, {"time_scale": -1e-9}, {"npho_scheme": "log2"}):
        with pytest.raises(ValueError):
            Normalizer(**bad)
        with pytest.raises(ValueError):
            NormalizationConfig(**bad)
    with pytest.raises(ValueError, match=r"npho_threshold: input should be greater than or equal to 0, got -1\.0"):
        Normalizer(npho_threshold=-1.0)
