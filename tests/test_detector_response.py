"""The realistic detector response: each component does what it should and nothing else."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from xecmae import simulate as sim
from xecmae.analysis.baselines import fit_point_source
from xecmae.cli import main as cli_main
from xecmae.detector import geometry as geo
from xecmae.detector.light import expected_photons, make_optics, mppc_fresnel_factor, solid_angle_fraction
from xecmae.detector.threads import single_thread
from xecmae.errors import UserError
from xecmae.simulate.deadmaps import face_dead_counts
from xecmae.simulate.response import channel_calibration
from xecmae.simulate.shower import realistic_shower
from xecmae.simulate.spec import COMPONENTS, REALISTIC, detector_spec, parse_parameter

N_EVENTS = 128
ALL_OFF = ",".join(COMPONENTS)


def only(*components: str) -> sim.DetectorSpec:
    """The realistic detector with just these components."""
    return detector_spec("realistic", disable=",".join(c for c in COMPONENTS if c not in components and c != "pileup"),
                         enable=",".join(c for c in components if c == "pileup"))


def _mean_light(spec: sim.DetectorSpec, n: int = 64, seed: int = 5) -> dict[str, np.ndarray]:
    return sim.EventGenerator("signal", seed=seed, detector=spec).mean_light(n)


# --- light transport ----------------------------------------------------------------------------------
def test_scattering_adds_light_behind_the_shower_and_lowers_the_inner_faces_peak_to_total():
    plain = _mean_light(only())
    scattered = _mean_light(only("scattering"))
    outer = geo.face_sensor_ids("outer")
    inner = geo.face_sensor_ids("inner")
    plain_total = plain["direct"]
    total = scattered["direct"] + scattered["scattered"]
    # sensors far from the shower, nearly dark in the direct light, receive the diffuse light
    dark = plain_total < 1e-3 * plain_total.max(1, keepdims=True)
    assert np.median((total * dark).sum(1) / (plain_total * dark).sum(1)) > 2
    def diffuse_share(face):
        return scattered["scattered"][:, face].sum(1) / total[:, face].sum(1)

    behind = diffuse_share(outer) > diffuse_share(inner)
    assert behind.mean() > 0.9, "the face behind the shower is not the more diffusely lit"
    peak_plain = plain_total[:, inner].max(1) / plain_total[:, inner].sum(1)
    peak_scattered = total[:, inner].max(1) / total[:, inner].sum(1)
    assert (peak_scattered < peak_plain).mean() > 0.95
    assert np.median(peak_scattered / peak_plain) < 0.95


def test_transport_accounts_for_every_emitted_photon():
    light = _mean_light(only("scattering", "absorption"))
    emitted = light["emitted"]
    parts = light["direct_budget"] + light["absorbed"] + light["scattered_budget"]
    np.testing.assert_allclose(parts, emitted, rtol=1e-10)
    share = light["scattered_budget"] / emitted
    assert 0.2 < np.median(share) < 0.7, f"scattered share {np.median(share):.2f} for a 45 cm Rayleigh length"
    assert (light["absorbed"] > 0).all()
    no_absorption = _mean_light(only("scattering"))
    assert (no_absorption["absorbed"] == 0).all()
    # what the direct beams lose on the way to the sensors matches what the scattering points carry
    lost = 1 - light["direct"].sum(1) / _mean_light(only())["direct"].sum(1)
    carried = (light["scattered_budget"] + light["absorbed"]) / emitted
    assert abs(np.median(lost) / np.median(carried) - 1) < 0.35


# --- sensor response ----------------------------------------------------------------------------------
@pytest.mark.parametrize("angle_deg, factor", [(0.0, 1.0), (60.0, 0.82), (80.0, 0.40)])
def test_oblique_mppc_light_falls_by_the_fresnel_factor(angle_deg, factor):
    sensor = 2000  # an inner-face MPPC
    position, normal = geo.sensor_positions()[sensor], geo.sensor_directions()[sensor]
    tangent = np.cross(normal, [0.0, 0.0, 1.0])
    tangent /= np.linalg.norm(tangent)
    angle = np.radians(angle_deg)
    point = position + 20.0 * (np.cos(angle) * normal + np.sin(angle) * tangent)
    ideal = expected_photons(point[None], np.array([10.0]))[0, sensor]
    angular = expected_photons(point[None], np.array([10.0]), optics=make_optics(None, True))[0, sensor]
    assert angular / ideal == pytest.approx(factor, abs=0.01)
    assert mppc_fresnel_factor(np.cos(angle)) == pytest.approx(factor, abs=0.01)


def test_fresnel_gradient_of_the_fit_model_matches_finite_differences():
    source = torch.tensor([[-80.0, 10.0, 5.0], [-95.0, -20.0, -12.0]], dtype=torch.float64)
    omega, grad = solid_angle_fraction(source, grad=True, fresnel=True)
    step = 1e-4
    for k in range(3):
        shift = torch.zeros(1, 3, dtype=torch.float64)
        shift[0, k] = step
        numeric = (solid_angle_fraction(source + shift, fresnel=True)
                   - solid_angle_fraction(source - shift, fresnel=True)) / (2 * step)
        scale = omega.abs().amax(1, keepdim=True)
        assert torch.allclose(grad[:, k] / scale, numeric / scale, atol=2e-4)


def test_the_fresnel_fit_recovers_a_point_seen_through_the_mppc_acceptance():
    rng = np.random.default_rng(3)
    points = rng.uniform([-100, -40, -20], [-70, 40, 20], (200, 3))
    points = points[sim.in_xenon(points)][:8]
    photons = expected_photons(points, np.full(len(points), 20.0), optics=make_optics(None, True))
    known = torch.from_numpy(np.broadcast_to(geo.is_mppc(), photons.shape).copy())  # the PMTs' window is not modelled
    errors = {}
    for fresnel in (False, True):
        with single_thread():
            fit = fit_point_source(torch.from_numpy(photons.astype(np.float64)), known, fresnel=fresnel)
        errors[fresnel] = np.linalg.norm(fit.position.numpy() - points, axis=1)
    assert np.median(errors[True]) < 0.05 < np.median(errors[False])


def test_gain_spread_is_fixed_for_a_run_of_the_detector_whatever_the_event_seed():
    a = sim.EventGenerator(seed=4, run=2, detector="realistic")
    b = sim.EventGenerator(seed=4, run=2, epoch=3, detector="realistic")
    other_events = sim.EventGenerator(seed=5, run=2, detector="realistic")  # e.g. a validation file
    other_run = sim.EventGenerator(seed=4, run=3, detector="realistic")
    other_detector = sim.EventGenerator(seed=4, run=2, detector=detector_spec(calibration_seed=7))
    same = lambda g, h: torch.equal(g.response.pde, h.response.pde) and torch.equal(g.response.charge,  # noqa: E731
                                                                                    h.response.charge)
    assert same(a, b) and same(a, other_events)
    assert not torch.equal(a.response.pde, other_run.response.pde)
    assert not torch.equal(a.response.charge, other_run.response.charge)
    assert not torch.equal(a.response.pde, other_detector.response.pde)
    assert not torch.equal(a.response.charge, other_detector.response.charge)
    efficiency, gain = channel_calibration(REALISTIC.calibration_seed, 2, 0.05, 0.05)
    assert 0.04 < efficiency.std() < 0.06 and 0.04 < gain.std() < 0.06
    assert abs(np.corrcoef(efficiency, gain)[0, 1]) < 0.1
    nominal = torch.tensor(np.where(geo.is_mppc(), sim.PDE_MPPC, sim.PDE_PMT), dtype=torch.float32)
    torch.testing.assert_close(a.response.pde, nominal * torch.tensor(efficiency, dtype=torch.float32))
    torch.testing.assert_close(a.response.charge, torch.tensor(gain, dtype=torch.float32) / nominal)
    ideal = sim.EventGenerator(seed=4, run=2, detector=only("shower"))
    assert torch.equal(ideal.response.pde, nominal)


def test_the_calibration_seed_is_set_like_any_detector_parameter():
    url = sim.parse_sim_url("sim://signal?seed=3&calibration_seed=1000000")
    assert url.detector_spec().calibration_seed == 1000000
    assert sim.parse_sim_url(url.url).detector_spec().calibration_seed == 1000000
    assert parse_parameter("calibration_seed=0") == ("calibration_seed", 0)
    with pytest.raises(UserError, match="calibration_seed"):
        detector_spec(calibration_seed=-1)
    with pytest.raises(UserError, match="calibration_seed"):
        parse_parameter("calibration_seed=1.5")


def test_excess_noise_widens_the_npho_of_a_steady_light():
    def spread(spec):
        gen = sim.EventGenerator(seed=9, dead_fraction=0.0, detector=spec)
        photons = torch.full((64, geo.N_SENSORS), 2000.0)
        npho, rel = torch.empty_like(photons), torch.empty_like(photons)
        rng = np.random.default_rng(1)
        sim.response.detect(photons, torch.zeros_like(photons), rng, torch.Generator().manual_seed(2), npho, rel,
                            gen._dead_ids, gen.response)
        return npho[:, :4092].var(0).mean().item()

    base, wide = spread(only()), spread(only("excess_noise"))
    expected = REALISTIC.excess_noise * 2000 / sim.PDE_MPPC + 36.0 * (1 - 1 / REALISTIC.excess_noise)
    assert wide / base == pytest.approx(expected / (2000 / sim.PDE_MPPC), rel=0.05)


# --- shower, dead channels, pile-up -----------------------------------------------------------------------
def test_the_realistic_shower_shares_the_gamma_energy_and_spreads_it_laterally():
    rng = np.random.default_rng(2)
    n = 400
    direction = np.tile([-1.0, 0.0, 0.0], (n, 1))
    first = np.tile([-75.0, 0.0, 0.0], (n, 1))
    energy = np.full(n, 52.83)
    deposits, deposit_energy, leak = realistic_shower(rng, REALISTIC, energy, direction, first)
    inside = sim.in_xenon(deposits).all(1)
    np.testing.assert_allclose((deposit_energy.sum(1) + leak)[inside], energy[inside], rtol=1e-12)
    shower = deposits[:, 1:1 + REALISTIC.shower_deposits]
    lateral = np.hypot(shower[..., 1], shower[..., 2])
    weights = deposit_energy[:, 1:1 + REALISTIC.shower_deposits]
    contained = (weights * (lateral < REALISTIC.moliere_radius)).sum() / weights.sum()
    assert 0.85 < contained < 0.95, f"{contained:.1%} of the shower energy within the Moliere radius"
    shares = weights / weights.sum(1, keepdims=True)
    assert shares.std(1).mean() > 0.05, "the deposits' shares do not fluctuate"
    assert leak.std() > 0


def test_clustered_dead_channels_fill_whole_boards_at_the_face_rates():
    mask = sim.clustered_dead_mask(0.01, seed=3, run=1)
    assert mask.sum() == round(0.01 * geo.N_SENSORS)
    per_face = [int(mask[geo.face_sensor_ids(f)].sum()) for f in geo.FACE_NAMES]
    np.testing.assert_array_equal(per_face, face_dead_counts(int(mask.sum())))
    inner = mask[geo.face_sensor_ids("inner")]
    boards = inner[:len(inner) // 16 * 16].reshape(-1, 16).all(1)
    assert boards.sum() >= 1, "no readout board failed whole"
    assert np.array_equal(mask, sim.clustered_dead_mask(0.01, seed=3, run=1))
    assert not np.array_equal(mask, sim.clustered_dead_mask(0.01, seed=4, run=1))
    assert np.array_equal(sim.EventGenerator(seed=3, detector="realistic").dead, mask)


def test_pileup_overlays_light_on_a_share_of_the_events_only():
    spec = detector_spec("realistic", enable="pileup", pileup_probability=0.5)
    light = sim.EventGenerator(seed=6, detector=spec).mean_light(N_EVENTS)
    has = light["pileup"].sum(1) > 0
    assert 0.3 < has.mean() < 0.7
    default = sim.EventGenerator(seed=6, detector="realistic").mean_light(N_EVENTS)
    np.testing.assert_allclose(light["direct"], default["direct"], rtol=1e-4, atol=1e-2)  # total minus the rest


# --- components are independent, events reproducible ----------------------------------------------------
def test_with_every_component_off_the_realistic_detector_is_the_ideal_one_bitwise():
    off = sim.EventGenerator("flat", seed=8, detector=detector_spec("realistic", disable=ALL_OFF))
    ideal = sim.EventGenerator("flat", seed=8, detector="ideal")
    a, b = off.generate(100, first_event=37), ideal.generate(100, first_event=37)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("component", ["gains", "excess_noise", "dead_clusters"])
def test_switching_off_a_sensor_component_leaves_the_light_alone(component):
    full = sim.EventGenerator(seed=2, detector="realistic").mean_light(64)
    without = sim.EventGenerator(seed=2, detector=detector_spec("realistic", disable=component)).mean_light(64)
    for key in full:
        np.testing.assert_array_equal(full[key], without[key], err_msg=key)


def test_switching_off_scattering_leaves_the_shower_and_the_truth_alone():
    full = sim.EventGenerator(seed=2, detector="realistic")
    without = sim.EventGenerator(seed=2, detector=detector_spec("realistic", disable="scattering"))
    a, b = full._kinematics(0), without._kinematics(0)
    assert torch.equal(a["pos"], b["pos"]) and torch.equal(a["weight"], b["weight"])
    for key in a["truth"]:
        np.testing.assert_array_equal(a["truth"][key], b["truth"][key])


def test_realistic_event_k_is_the_same_however_the_request_is_split():
    gen = sim.EventGenerator(seed=12, detector="realistic")
    whole = gen.generate(200)
    parts = [gen.generate(37), gen.generate(93, 37), gen.generate(70, 130)]
    out = sim.empty_events(200)
    sim.EventGenerator(seed=12, detector="realistic").fill(out, 0, 200, workers=2)
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key], err_msg=key)
        np.testing.assert_array_equal(out[key], whole[key], err_msg=key)


# --- user input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"name": "perfect"}, "unknown detector 'perfect': use one of realistic, ideal"),
    ({"disable": "scatter"}, "unknown detector component 'scatter': use any of shower, scattering"),
    ({"scattering_length": -1.0}, "scattering_length=-1.0: must be a positive number"),
    ({"absorption_length": 0.0}, "absorption_length=0.0: must be a positive number"),
    ({"board_fraction": 1.5}, "board_fraction=1.5: must be a fraction in 0-1"),
    ({"gain_spread": -0.1}, "gain_spread=-0.1: must be a fraction in 0-1"),
    ({"name": "ideal", "enable": "pileup"}, "the ideal detector has no components to enable"),
])
def test_bad_detector_settings_name_the_value_and_what_is_allowed(kwargs, message):
    with pytest.raises(UserError, match=re.escape(message)) as info:
        detector_spec(**kwargs)
    assert "\n" not in str(info.value)


def test_sim_urls_choose_the_detector_its_components_and_parameters():
    spec = sim.parse_sim_url("sim://signal?seed=2&detector=ideal")
    assert spec.generator().detector.name == "ideal"
    tuned = sim.parse_sim_url("sim://signal?seed=2&disable=gains,angular&scattering_length=30")
    detector = tuned.generator().detector
    assert not detector.has("gains") and not detector.has("angular") and detector.scattering_length == 30.0
    assert sim.parse_sim_url(tuned.url) == tuned
    assert sim.parse_sim_url("sim://signal?seed=2").generator().detector == REALISTIC
    for url, message in [("sim://signal?detector=perfect", "unknown detector 'perfect'"),
                         ("sim://signal?disable=gain", "unknown detector component 'gain'"),
                         ("sim://signal?scattering_length=-5", "scattering_length=-5.0: must be a positive")]:
        with pytest.raises(UserError, match=message):
            sim.parse_sim_url(url)


@pytest.mark.parametrize("args, message", [
    (["--detector", "perfect"], "unknown detector 'perfect': use one of realistic, ideal"),
    (["--disable", "scatter"], "unknown detector component 'scatter'"),
    (["--detector-param", "absorption_length=-3"], "absorption_length=-3.0: must be a positive number"),
    (["--detector-param", "colour=3"], "detector parameter 'colour=3': use NAME=VALUE"),
])
def test_simulate_command_rejects_bad_detector_settings_in_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "out.root"
    code = cli_main(["simulate", "--events", "10", "--out", str(out), "--no-progress", *args])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err.splitlines()[-1] and "Traceback" not in err, err
    assert not out.exists()


def test_simulate_command_writes_the_ideal_detector_on_request(tmp_path, capsys):
    import uproot

    out = tmp_path / "ideal.root"
    assert cli_main(["simulate", "--events", "20", "--out", str(out), "--seed", "3", "--detector", "ideal",
                     "--no-progress"]) == 0
    assert "ideal detector" in capsys.readouterr().out
    with uproot.open(out) as handle:
        npho = handle["tree"]["npho"].array(library="np")
    np.testing.assert_array_equal(npho, sim.EventGenerator(seed=3, detector="ideal").generate(20)["npho"])
