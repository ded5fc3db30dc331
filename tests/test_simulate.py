"""The built-in event generator: physics, reproducibility, streaming, ROOT files and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import uproot

from xecmae import simulate as sim
from xecmae.cli import main as cli_main
from xecmae.data.deadchannels import read_id_file
from xecmae.detector import geometry as geo
from xecmae.errors import UserError

N_EVENTS = 384
MPPC_PITCH_CM = 1.5


def ideal_generator(*args, **kwargs) -> sim.EventGenerator:
    """The generator with the ideal detector, whose physics these tests pin down."""
    return sim.EventGenerator(*args, detector="ideal", **kwargs)


@pytest.fixture(scope="module")
def signal() -> tuple[sim.EventGenerator, dict[str, np.ndarray]]:
    gen = ideal_generator("signal", seed=11)
    return gen, gen.generate(N_EVENTS)


def _alive_values(gen: sim.EventGenerator, events: dict[str, np.ndarray], key: str = "npho") -> np.ndarray:
    return np.where(gen.dead, 0.0, events[key].astype(np.float64))


def _distances(events: dict[str, np.ndarray]) -> np.ndarray:
    """(n, 4760) cm from every sensor centre to the first interaction point."""
    return np.linalg.norm(geo.sensor_positions()[None] - events["xyzTruth"].astype(np.float64)[:, None], axis=-1)


# --- physics -----------------------------------------------------------------------------------
def test_total_npho_of_signal_events_lies_between_3e5_and_1_5e6(signal):
    gen, events = signal
    total = _alive_values(gen, events).sum(1)
    inside = (total > 3e5) & (total < 1.5e6)
    assert inside.mean() > 0.95, f"only {inside.mean():.1%} of 52.8 MeV events have 3e5 < total npho < 1.5e6"
    assert 6e5 < np.median(total) < 8e5, f"median total npho {np.median(total):.3g}, expected 6-8e5 for 52.8 MeV"


def test_light_of_a_point_source_peaks_at_the_closest_sensor():
    # The light model alone, noise free: per unit area the closest sensor sees the most light.
    rng = np.random.default_rng(5)
    points = rng.uniform([-106, -70, -40], [-64, 70, 40], (4000, 3))
    points = points[sim.in_xenon(points)][:300]
    photons = sim.expected_photons(points, np.full(len(points), 10.0))
    distance = np.linalg.norm(geo.sensor_positions()[None] - points[:, None], axis=-1)
    brightest = (photons / geo.sensor_area()).argmax(1)
    same = brightest == distance.argmin(1)
    assert same.mean() > 0.9, f"brightest == closest in only {same.mean():.1%} of point sources"


def test_brightest_sensor_sits_at_the_first_interaction_point(signal):
    # Sensors differ 11x in area, so brightness is photons per cm^2. The shower develops over
    # about 9 cm beyond the first interaction and photon statistics split near ties, so the
    # brightest sensor is the closest one in about two thirds of the events and no more than one
    # MPPC pitch farther from the first interaction point than the closest one in > 90%.
    gen, events = signal
    density = np.where(gen.dead, -np.inf, events["npho"] / geo.sensor_area())
    distance = np.where(gen.dead, np.inf, _distances(events))
    brightest = density.argmax(1)
    excess = distance[np.arange(len(brightest)), brightest] - distance.min(1)
    assert (excess < MPPC_PITCH_CM).mean() > 0.9, f"{(excess < MPPC_PITCH_CM).mean():.1%}"
    assert (excess == 0).mean() > 0.5, f"brightest is the closest in only {(excess == 0).mean():.1%}"


def test_far_and_on_axis_solid_angles_are_exact():
    pos, normal, area = geo.sensor_positions(), geo.sensor_directions(), geo.sensor_area()
    for sensor, height in ((100, 0.5), (100, 40.0), (4400, 2.0), (4400, 60.0)):
        photons = sim.expected_photons((pos[sensor] + height * normal[sensor])[None], np.array([1.0]))[0, sensor]
        disc = 0.5 * (1 - height / np.hypot(height, np.sqrt(area[sensor] / np.pi)))
        assert photons == pytest.approx(sim.PHOTONS_PER_MEV * disc, rel=1e-3)
    # far away and off axis: A cos(theta) / (4 pi d^2); behind the sensor: nothing
    sensor = 2000
    offset = 80.0 * normal[sensor] + 30.0 * np.cross(normal[sensor], [0, 0, 1])
    d = np.linalg.norm(offset)
    far = sim.expected_photons((pos[sensor] + offset)[None], np.array([1.0]))[0, sensor]
    expected = sim.PHOTONS_PER_MEV * area[sensor] * (80.0 / d) / (4 * np.pi * d * d)
    assert far == pytest.approx(expected, rel=2e-3)
    behind = sim.expected_photons((pos[sensor] - 5.0 * normal[sensor])[None], np.array([1.0]))[0, sensor]
    assert behind == 0.0


@pytest.mark.parametrize("mu", [0.0004, 0.02, 0.6, 3.7, 11.0, 29.5, 31.0, 90.0])
def test_photoelectron_counts_follow_the_poisson_law(mu):
    n = 100_000
    rng = np.random.default_rng(int(mu * 1000))
    u, v = (torch.from_numpy(rng.random(n, dtype=np.float32)) for _ in range(2))
    counts, fresh = sim.sample_poisson(torch.full((n,), mu), u, v, torch.Generator().manual_seed(1))
    counts = counts.numpy().astype(int)
    k = np.arange(counts.max() + 1)
    pmf = np.exp(k * np.log(mu) - mu - np.cumsum(np.log(np.maximum(k, 1))))
    expected, observed = n * pmf, np.bincount(counts)
    used = expected > 10
    chi2 = ((observed[used] - expected[used]) ** 2 / expected[used]).sum()
    dof = max(used.sum() - 1, 1)
    assert chi2 < dof + 5 * np.sqrt(2 * dof) + 5, f"chi2 {chi2:.1f} for {dof} dof"
    assert counts.mean() == pytest.approx(mu, abs=5 * np.sqrt(mu / n) + 1e-4)
    zero = fresh.numpy()[counts == 0]
    if len(zero) > 1000:  # the noise-time uniform of sensors that saw nothing
        assert abs(zero.mean() - 0.5) < 0.02 and abs(zero.std() - 12**-0.5) < 0.02


def test_inner_face_light_falls_with_depth(signal):
    gen, events = signal
    inner = _alive_values(gen, events)[:, geo.is_mppc()].sum(1)
    depth = events["uvwTruth"][:, 2]
    rank = np.corrcoef(np.argsort(np.argsort(depth)), np.argsort(np.argsort(inner)))[0, 1]
    assert rank < -0.3, f"Spearman correlation of inner-face npho with depth w is {rank:.2f}"
    shallow, deep = inner[depth < 3].mean(), inner[depth > 10].mean()
    assert shallow > 1.3 * deep, f"inner npho {shallow:.3g} for w < 3 cm vs {deep:.3g} for w > 10 cm"


def test_time_of_bright_sensors_grows_with_distance_from_the_first_interaction(signal):
    gen, events = signal
    npho, time, distance = _alive_values(gen, events), events["relative_time"], _distances(events)
    correlations = []
    for k in range(len(npho)):
        bright = (npho[k] > 2000) & ~gen.dead
        if bright.sum() >= 5:
            correlations.append(np.corrcoef(time[k, bright], distance[k, bright])[0, 1])
    assert len(correlations) > 0.9 * len(npho)
    assert np.median(correlations) > 0.9, f"median correlation {np.median(correlations):.3f}"
    # and the slope is the speed of light in liquid xenon, c / 1.61 = 18.62 cm/ns
    bright = (npho > 2000) & ~gen.dead[None]
    slope = np.polyfit(distance[bright], time[bright] * 1e9, 1)[0]
    assert 1 / slope == pytest.approx(18.62, rel=0.15), f"{1 / slope:.1f} cm/ns"


def test_relative_time_is_measured_from_the_earliest_bright_sensor(signal):
    gen, events = signal
    time = events["relative_time"][:, ~gen.dead]
    npho = events["npho"][:, ~gen.dead]
    bright = npho > 50 / sim.PDE_MPPC * 1.5  # well above 50 photoelectrons on either sensor type
    assert np.all(np.where(bright, time, np.inf).min(1) >= 0)
    assert np.all(np.abs(time).max(1) < 1e-6)  # seconds, and no dead value among the alive ones
    assert np.all(events["timeTruth"] < 0)  # the emission precedes the first light


def test_very_dim_events_still_get_a_time_reference():
    # at 1-1.5 MeV hardly any sensor passes 50 photoelectrons: the reference falls back to any lit one
    gen = ideal_generator("flat:1:1.5", seed=3)
    events = gen.generate(32)
    time = events["relative_time"][:, ~gen.dead]
    assert np.all(np.isfinite(time)) and np.all(np.abs(time) < 1e-6)
    assert np.all(np.isfinite(events["timeTruth"])) and np.all(events["timeTruth"] < 0)
    assert np.sum(time.min(1) == 0) > 8  # events whose earliest lit sensor became the reference


def test_dead_channels_carry_1e10_in_both_branches(signal):
    gen, events = signal
    assert abs(gen.dead.sum() - 0.01 * geo.N_SENSORS) <= 1
    for key in ("npho", "relative_time"):
        assert np.all(np.isfinite(events[key])), key
        assert np.all(events[key][:, gen.dead] == np.float32(1e10)), key
        assert np.all(np.abs(events[key][:, ~gen.dead]) < 9e9), key
    faces = np.bincount(geo.face_of_sensor()[gen.dead], minlength=6) / np.bincount(geo.face_of_sensor())
    assert faces[0] < 0.01 and faces[4:].mean() > 0.03, f"dead fraction per face {faces.round(3)}"
    # fixed per seed and run, not per event or epoch
    assert np.array_equal(ideal_generator(seed=11, epoch=3).dead, gen.dead)
    assert not np.array_equal(ideal_generator(seed=12).dead, gen.dead)
    assert not np.array_equal(ideal_generator(seed=11, run=2).dead, gen.dead)


def test_dead_map_sets_exactly_the_listed_channels(tmp_path):
    path = tmp_path / "dead.txt"
    path.write_text("# dead channels\n5, 17\n4600  4759\n")
    gen = ideal_generator(seed=1, dead_map=read_id_file(str(path)))
    np.testing.assert_array_equal(gen.dead_ids, [5, 17, 4600, 4759])
    events = gen.generate(20)
    assert np.all(events["npho"][:, [5, 17, 4600, 4759]] == np.float32(1e10))
    assert np.all(events["npho"][:, 6] < 9e9)
    assert ideal_generator(seed=1, dead_fraction=0.0).dead.sum() == 0


def test_truth_branches_agree_with_each_other(signal):
    _, events = signal
    xyz, vtx = events["xyzTruth"].astype(np.float64), events["xyzVTX"].astype(np.float64)
    np.testing.assert_allclose(events["uvwTruth"], geo.xyz_to_uvw(xyz), atol=1e-4)
    vec = events["emiVec"].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-6)
    along = (xyz - vtx) / np.linalg.norm(xyz - vtx, axis=1, keepdims=True)
    np.testing.assert_allclose(vec, along, atol=1e-5)
    theta, phi = events["emiAng"][:, 0], events["emiAng"][:, 1]
    np.testing.assert_allclose(theta, np.degrees(np.arccos(vec[:, 2])), atol=1e-3)
    np.testing.assert_allclose(phi, np.degrees(np.arctan2(vec[:, 1], -vec[:, 0])), atol=1e-3)
    assert np.all(np.abs(np.cos(np.radians(theta))) < sim.COS_THETA_MAX + 1e-6)
    assert np.all(np.abs(phi) < sim.PHI_MAX)
    assert np.all(sim.in_xenon(xyz))
    assert np.std(vtx, axis=0) == pytest.approx([1.0, 1.0, 3.5], rel=0.2)
    np.testing.assert_array_equal(events["event"], np.arange(N_EVENTS))
    assert np.all(events["run"] == 1)
    for name, (dtype, shape) in sim.BRANCHES.items():
        assert events[name].dtype == dtype and events[name].shape == (N_EVENTS, *shape), name


def test_signal_is_a_line_at_52_83_mev_and_flat_is_flat():
    signal = ideal_generator("signal", seed=2).generate(16)["energyTruth"]
    assert np.all(signal == np.float32(0.05283))
    spectrum = sim.parse_spectrum("flat:15:60")
    energy = spectrum.sample(np.random.default_rng(3), 200_000)
    counts = np.histogram(energy, bins=9, range=(15, 60))[0]
    chi2 = ((counts - counts.mean()) ** 2 / counts.mean()).sum()
    assert energy.min() >= 15 and energy.max() <= 60 and chi2 < 30, f"chi2 {chi2:.1f} for 8 dof"
    # redrawing gammas that convert outside the xenon keeps their energy: still flat
    generated = ideal_generator("flat:15:60", seed=4).generate(320)["energyTruth"] * 1e3
    assert np.all((generated >= 15) & (generated <= 60))
    counts = np.histogram(generated, bins=4, range=(15, 60))[0]
    assert counts.min() > 0.6 * counts.mean(), counts
    falling = np.histogram(sim.parse_spectrum("background").sample(np.random.default_rng(5), 50_000), bins=5)[0]
    assert np.all(np.diff(falling) < 0), falling


@pytest.mark.parametrize("text", ["signal:50", "flat:60:15", "flat:a:b", "gauss", "flat:0:10", ""])
def test_unknown_spectra_are_user_errors(text):
    with pytest.raises(UserError):
        sim.parse_spectrum(text)


# --- reproducibility and streaming -------------------------------------------------------------
def test_events_do_not_depend_on_how_the_request_is_split():
    gen = ideal_generator("flat:20:60", seed=9)
    whole = gen.generate(150, first_event=40)
    parts = [ideal_generator("flat:20:60", seed=9).generate(n, first_event=s) for s, n in ((40, 7), (47, 100),
                                                                                            (147, 43))]
    for name in sim.BRANCHES:
        np.testing.assert_array_equal(whole[name], np.concatenate([p[name] for p in parts]), err_msg=name)
    for workers in (1, 2):
        buffer = sim.empty_events(200)
        gen.fill(buffer, 40, 150, workers=workers)
        for name in sim.BRANCHES:
            np.testing.assert_array_equal(buffer[name][:150], whole[name], err_msg=name)
    other = ideal_generator("flat:20:60", seed=10).generate(10, first_event=40)
    assert not np.array_equal(other["npho"], whole["npho"][:10])


def test_sim_url_parsing():
    spec = sim.parse_sim_url("sim://signal?seed=1&events=100000&dead_fraction=0.01")
    assert (spec.spectrum, spec.seed, spec.events, spec.dead_fraction) == ("signal", 1, 100000, 0.01)
    spec = sim.parse_sim_url("sim://flat:15:60?seed=3")
    assert spec.spectrum == "flat:15:60" and spec.events == sim.DEFAULT_EPOCH_EVENTS
    assert sim.parse_sim_url(spec.url) == spec
    assert sim.parse_sim_url("sim://").spectrum == "signal"


@pytest.mark.parametrize("url", [
    "signal?seed=1", "sim://gauss?seed=1", "sim://signal?sed=1", "sim://signal?seed=x", "sim://signal?events=0",
    "sim://signal?seed=-1", "sim://signal?dead_fraction=1.5", "sim://signal?dead_map=/no/such/file.txt",
    "sim://signal?seed=1&seed=2", "sim://signal?seed",
])
def test_bad_sim_urls_are_user_errors(url):
    with pytest.raises(UserError):
        sim.parse_sim_url(url)


def test_sim_chunks_partition_an_epoch_and_a_new_epoch_gives_new_events():
    spec = sim.parse_sim_url("sim://signal?seed=5&events=150")
    seen, npho = [], {}
    for shard in range(2):
        for chunk in sim.sim_chunks(spec, shard, 2, chunksize=40):
            assert len(chunk["event"]) <= 40
            seen.extend(chunk["event"].tolist())
            npho.update(zip(chunk["event"].tolist(), chunk["npho"], strict=True))
    assert sorted(seen) == list(range(150))
    reference = spec.generator().generate(150)
    np.testing.assert_array_equal(np.stack([npho[k] for k in range(150)]), reference["npho"])
    epoch1 = next(sim.sim_chunks(spec, 0, 2, chunksize=40, epoch=1))
    assert epoch1["event"][0] == 0 and not np.array_equal(epoch1["npho"], reference["npho"][:40])
    assert np.array_equal(epoch1["npho"][0] == np.float32(1e10), reference["npho"][0] == np.float32(1e10))


# --- ROOT files ---------------------------------------------------------------------------------
def test_root_files_are_ttrees_that_round_trip_exactly(tmp_path):
    gen = ideal_generator(seed=21)
    [path] = sim.write_root(tmp_path / "events.root", 100, gen, chunk_events=64, progress=False)
    expected = gen.generate(100)
    with uproot.open(path) as handle:
        tree = handle["tree"]
        assert tree.classname == "TTree" and tree.num_entries == 100
        assert tree["npho"].typename == "float[4760]" and tree["relative_time"].typename == "float[4760]"
        assert tree["event"].typename == "int32_t" and tree["emiAng"].typename == "float[2]"
        assert tree["npho"].compression is None or isinstance(tree["npho"].compression, uproot.LZ4)
        arrays = tree.arrays(list(sim.BRANCHES), library="np")
    for name in sim.BRANCHES:
        np.testing.assert_array_equal(np.asarray(arrays[name].tolist() if arrays[name].dtype == object
                                                 else arrays[name]), expected[name], err_msg=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.root"]


def test_files_option_splits_the_events_with_continuing_numbers(tmp_path):
    gen = ideal_generator(seed=22)
    paths = sim.write_root(tmp_path / "split.root", 50, gen, files=3, progress=False, background_writer=False)
    assert [p.name for p in paths] == ["split_0.root", "split_1.root", "split_2.root"]
    events = []
    for p in paths:
        with uproot.open(p) as handle:
            events.append(handle["tree"]["event"].array(library="np"))
    np.testing.assert_array_equal(np.concatenate(events), np.arange(50))
    assert [len(e) for e in events] == [16, 17, 17]


def test_a_failure_while_writing_leaves_no_file(tmp_path, monkeypatch):
    gen = ideal_generator(seed=23)
    calls = []

    def failing_fill(out, first_event, n, **kwargs):
        calls.append(n)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        sim.EventGenerator.fill(gen, out, first_event, n, **kwargs)

    monkeypatch.setattr(gen, "fill", failing_fill)
    with pytest.raises(RuntimeError, match="disk on fire"):
        sim.write_root(tmp_path / "broken.root", 200, gen, chunk_events=32, files=2, progress=False)
    assert list(tmp_path.iterdir()) == []


# --- command line -------------------------------------------------------------------------------
def test_simulate_command_writes_the_generators_events(tmp_path, capsys):
    out = tmp_path / "cli.root"
    assert cli_main(["simulate", "--events", "40", "--out", str(out), "--seed", "3", "--no-progress"]) == 0
    assert "wrote 40 events" in capsys.readouterr().out
    with uproot.open(out) as handle:
        npho = handle["tree"]["npho"].array(library="np")
    np.testing.assert_array_equal(npho, sim.EventGenerator(seed=3).generate(40)["npho"])  # realistic, the default


@pytest.mark.parametrize("args, message", [
    (["--events", "0"], "--events must be positive"),
    (["--events", "-5"], "--events must be positive"),
    (["--events", "10", "--spectrum", "gauss"], "unknown spectrum"),
    (["--events", "10", "--out", "{missing}/x.root"], "does not exist"),
    (["--events", "10", "--dead-map", "{badmap}"], "outside 0-4759"),
    (["--events", "10", "--dead-map", "{nomap}"], "cannot be read"),
    (["--events", "10", "--seed", "-1"], "seed must be a non-negative integer"),
    (["--events", "3", "--files", "4"], "cannot split 3 events into 4 files"),
])
def test_bad_arguments_give_one_error_line_and_no_file(tmp_path, capsys, args, message):
    badmap = tmp_path / "bad_ids.txt"
    badmap.write_text("1 2 4760\n")
    values = {"missing": str(tmp_path / "missing"), "badmap": str(badmap), "nomap": str(tmp_path / "nomap.txt")}
    args = [a.format(**values) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out.root")]
    assert cli_main(["simulate", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert err.startswith("xecmae simulate: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_ids.txt"]
