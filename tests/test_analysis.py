"""Prediction-file analysis and event displays: known errors come back, npho-only files stay npho-only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_config
from xecmae.analysis.analyze import analyze, face_table
from xecmae.analysis.predictions import PredictionWriter
from xecmae.cli import main as cli_main
from xecmae.detector import geometry as geo
from xecmae.detector.normalize import Normalizer
from xecmae.models.masking import random_masking
from xecmae.models.spec import MaskingSpec

FACES = geo.face_of_sensor()
NPHO_ERROR = np.array([0.10, -0.20, 0.05, 0.30, -0.10, 0.15])  # relative, per face, on hidden sensors
TIME_ERROR = np.array([1.5, -2.0, 0.5, 3.0, -1.0, 2.5])  # ns, per face, on hidden sensors
PNG = b"\x89PNG\r\n\x1a\n"


def write_known_errors(path, channels, events: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """A prediction file whose model is off by NPHO_ERROR / TIME_ERROR on hidden sensors and exact elsewhere."""
    rng = np.random.default_rng(seed)
    norm = Normalizer()
    npho = rng.lognormal(4.8, 1.4, (events, geo.N_SENSORS)).astype(np.float32)  # photons, about half >= 100
    time = rng.normal(40e-9, 6e-9, (events, geo.N_SENSORS)).astype(np.float32)  # s
    dead = rng.random(geo.N_SENSORS) < 0.02
    npho[:, dead], time[:, dead] = 1e10, 1e10
    x, valid = norm(torch.from_numpy(npho), torch.from_numpy(time))
    spec = MaskingSpec(mask_ratio=0.6, time_mask_ratio_scale=1.0)
    hidden = random_masking(valid, spec, generator=torch.Generator().manual_seed(seed)).numpy()
    valid = valid.numpy()
    good = np.where(valid[..., 0], npho, 0.0).astype(np.float64)
    pred_npho = np.where(hidden, good * (1 + NPHO_ERROR[FACES]), good)
    pred_time = np.where(hidden, time + TIME_ERROR[FACES] * 1e-9, time).astype(np.float64)
    pred = np.stack([norm.npho_forward(pred_npho), norm.time_forward(pred_time)], -1)[..., :len(channels)]
    with PredictionWriter(path, channels, norm) as writer:
        writer.add(event=np.arange(events), run=np.ones(events), x=x.numpy(), valid=valid, hidden=hidden,
                   pred=pred.astype(np.float32))
    return {"npho": good, "hidden": hidden, "valid_npho": valid[..., 0], "valid_time": valid[..., 1]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictions")
    both, npho_only = root / "both.root", root / "npho_only.root"
    truth = write_known_errors(both, ("npho", "time"))
    write_known_errors(npho_only, ("npho",))
    return {"both": both, "npho_only": npho_only, "truth": truth}


def test_analysis_reproduces_known_errors_per_face(files):
    truth = files["truth"]
    analysis = analyze(files["both"], baselines=False)
    assert analysis.channels == ("npho", "time") and analysis.events == 12
    rows = {(r["channel"], r["face"]): r for r in face_table(analysis) if r["method"] == "model"}
    for f, face in enumerate(geo.FACE_NAMES):
        scored = truth["hidden"] & truth["valid_npho"] & (geo.face_of_sensor() == f)
        npho = rows["npho", face]
        assert npho["count"] == scored.sum()
        assert npho["rel_count"] == (scored & (truth["npho"] >= 100)).sum()
        assert npho["median_abs_rel"] == pytest.approx(abs(NPHO_ERROR[f]), abs=1e-4)
        assert npho["median_rel"] == pytest.approx(NPHO_ERROR[f], abs=1e-4)
        assert npho["bias"] == pytest.approx(NPHO_ERROR[f] * truth["npho"][scored].mean(), rel=1e-3)
        time = rows["time", face]
        assert time["count"] == (truth["hidden"] & truth["valid_time"] & (geo.face_of_sensor() == f)).sum()
        for key, expected in (("bias", TIME_ERROR[f]), ("mae", abs(TIME_ERROR[f])), ("rmse", abs(TIME_ERROR[f]))):
            assert time[key] == pytest.approx(expected, abs=1e-3), (face, key)
    # visible sensors were predicted exactly; "all" counts both
    visible = {(r["channel"], r["face"]): r for r in face_table(analyze(files["both"], "visible", baselines=False))}
    assert visible["npho", "all"]["mae"] < 1e-3 and visible["time", "all"]["rmse"] < 1e-3
    assert visible["npho", "all"]["count"] == (~truth["hidden"] & truth["valid_npho"]).sum()
    everything = face_table(analyze(files["both"], "all", face="outer", baselines=False))
    assert {r["face"] for r in everything} == {"outer"}
    assert everything[0]["count"] == (truth["valid_npho"] & (FACES == 3)).sum()


def test_analyze_command_prints_model_and_baselines_and_writes_plots(files, tmp_path, capsys):
    out = tmp_path / "plots"
    assert cli_main(["analyze", str(files["both"]), "--out", str(out), "--max-events", "4"]) == 0
    text = capsys.readouterr().out
    assert "npho [photons]" in text and "time [ns]" in text
    for method in ("model", "neighbour_avg", "solid_angle_avg", "point_source_fit"):
        assert method in text
    names = {p.name for p in out.iterdir()}
    assert names == {"npho_error_by_face.png", "time_error_by_face.png", "npho_pred_vs_true.png",
                     "npho_rel_error_vs_true.png", "time_residual_vs_npho.png"}
    assert all((out / n).read_bytes()[:8] == PNG for n in names)


def test_an_npho_only_file_gives_no_time_rows_or_plots(files, tmp_path, capsys):
    analysis = analyze(files["npho_only"], baselines=False)
    assert analysis.channels == ("npho",)
    assert {r["channel"] for r in face_table(analysis)} == {"npho"}
    out = tmp_path / "plots"
    assert cli_main(["analyze", str(files["npho_only"]), "--out", str(out), "--face", "top", "--max-events", "2"]) == 0
    text = capsys.readouterr().out
    assert "channels npho," in text and "time" not in text
    assert sorted(p.name for p in out.iterdir()) == ["npho_error_by_face.png", "npho_pred_vs_true.png",
                                                     "npho_rel_error_vs_true.png"]


@pytest.mark.parametrize("args, message", [
    (["--mode", "masked"], "not a prediction file"),
])
def test_analyze_rejects_a_file_that_is_not_a_prediction_file(sim_data, capsys, args, message):
    assert cli_main(["analyze", sim_data["val"], *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_display_errors_are_one_line(files, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    for args, message in ((["--event", "12"], "out of range"), (["--channel", "time"], "no time predictions")):
        path = files["npho_only"]
        assert cli_main(["display", str(path), *args, "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("outer_mode, channel", [("finegrid", "time"), ("split", "npho")])
def test_display_draws_a_trained_models_predictions_in_both_outer_modes(sim_data, tmp_path, capsys, outer_mode,
                                                                        channel):
    cfg = tiny_config(sim_data, tmp_path, training={"epochs": 1}, data={"max_events": 32, "val_max_events": 8},
                      model={"outer_mode": outer_mode},
                      checkpoint={"save_predictions": True, "predictions_max_events": 4})
    from xecmae.train.pretrain import pretrain

    predictions = pretrain(cfg) / "mae_predictions_epoch_1.root"
    out = tmp_path / "display.png"
    assert cli_main(["display", str(predictions), "--event", "3", "--channel", channel, "--out", str(out),
                     "--dpi", "50"]) == 0
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 10_000
    assert str(out) in capsys.readouterr().out
