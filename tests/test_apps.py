"""Applying trained models: predict and validate a regressor, bad inputs refused, the architecture in a checkpoint."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import uproot

from xecmae.analysis.calibration import ClassicalCalibration
from xecmae.apps.predict import predict_regression
from xecmae.apps.validate import fiducial, validate_regressor
from xecmae.cli import main
from xecmae.config import ConfigError, FiducialConfig, InpainterConfig, RegressorConfig
from xecmae.configload import load_config, validate
from xecmae.data.rootio import write_tree
from xecmae.detector.geometry import uvw_to_xyz
from xecmae.models import build_mae
from xecmae.models.regressor import TASK_TARGETS, build_regressor
from xecmae.train.architecture import adopt_architecture, inferred_architecture
from xecmae.train.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TASKS = ["position", "energy", "timing", "angle"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny untrained regressor (all four tasks), inpainter and MAE checkpoints."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    reg_cfg = validate({"model": {"size": "tiny", "tasks": TASKS}}, RegressorConfig)
    save_checkpoint({"kind": "regressor", "model_state_dict": build_regressor(reg_cfg).state_dict(),
                     "config": reg_cfg.model_dump(mode="json"), "epoch": 3}, root / "reg.pth")
    inp_cfg = validate({"model": {"size": "tiny"}}, InpainterConfig)
    save_checkpoint({"kind": "inpainter", "model_state_dict": build_mae(inp_cfg).state_dict(),
                     "config": inp_cfg.model_dump(mode="json")}, root / "inp.pth")
    mae_cfg = validate({"model": {"size": "tiny", "encoder_dim": 64, "num_heads": 2}})
    save_checkpoint({"kind": "mae", "model_state_dict": build_mae(mae_cfg).state_dict(),
                     "config": mae_cfg.model_dump(mode="json")}, root / "mae64.pth")
    return {"reg": str(root / "reg.pth"), "inp": str(root / "inp.pth"), "mae64": str(root / "mae64.pth"),
            "dir": root}


def test_predict_writes_every_task_in_physical_units_with_truth_and_metadata(sim_data, checkpoints, tmp_path):
    out = tmp_path / "reco.root"
    counts = predict_regression(checkpoints["reg"], sim_data["train"], out, chunk_events=50, batch_size=64)
    assert counts == {"events": 192, "files": 2}  # a glob of two files
    with uproot.open(out) as f:
        reco = f["tree"].arrays(library="np")
        meta = {k: v[0] for k, v in f["metadata"].arrays(library="np").items()}
    inputs = sorted(Path(sim_data["dir"]).glob("train_*.root"))
    with uproot.open(inputs[0]) as f:
        first = f["tree"].arrays(library="np")
    n = len(first["event"])
    np.testing.assert_array_equal(reco["event"][:n], first["event"])
    np.testing.assert_array_equal(reco["emiAng"][:n], first["emiAng"])
    # the model's own output, decoded by hand, for the first events
    model = build_regressor(validate({"model": {"size": "tiny", "tasks": TASKS}}, RegressorConfig))
    model.load_state_dict(torch.load(checkpoints["reg"], weights_only=True)["model_state_dict"])
    model.eval()
    with torch.no_grad():
        x, valid = model.normalizer(torch.from_numpy(first["npho"][:8]), torch.from_numpy(first["relative_time"][:8]))
        direct = {t: TASK_TARGETS[t].decode(v).numpy() for t, v in model(x, valid).items()}
    np.testing.assert_allclose(reco["uvwPred"][:8], direct["position"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reco["energyPred"][:8], direct["energy"][:, 0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(reco["energyPredMeV"], reco["energyPred"] * 1000, rtol=1e-6)
    np.testing.assert_allclose(reco["xyzPred"], uvw_to_xyz(reco["uvwPred"]), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(reco["thetaPred"], reco["emiAngPred"][:, 0])
    assert np.abs(reco["thetaPred"] - 90).max() < 90  # degrees, around the target offset of 90
    assert meta["model_kind"] == "regressor" and meta["tasks"] == ",".join(TASKS) and meta["epoch"] == 3
    assert json.loads(meta["normalization"])["npho_scheme"] == "log1p"
    assert json.loads(meta["units"])["energyPredMeV"] == "MeV"


def test_validate_reports_model_and_classical_inside_the_fiducial_volume(sim_data, checkpoints, tmp_path):
    result = validate_regressor(checkpoints["reg"], sim_data["val"], tmp_path / "val", cuts={"w_min": 1.0})
    with uproot.open(sim_data["val"]) as f:
        uvw = f["tree"]["uvwTruth"].array(library="np")
    kept = fiducial(uvw.astype(np.float64), FiducialConfig(w_min=1.0))
    assert result["events"] == {"read": 64, "fiducial": int(kept.sum())} and 0 < kept.sum() < 64
    assert result["fiducial_cuts_cm"] == {"u_max": 23.9, "v_max": 67.9, "w_min": 1.0}
    model, classical = result["metrics"]["model"], result["metrics"]["classical"]
    for name in ("position_res_u_cm", "position_rms_w_cm", "position_res_3d_cm", "energy_bias_rel",
                 "timing_res_ns", "angle_res_theta_deg", "angle_res_deg"):
        assert np.isfinite(model[name]), name
    assert set(classical) >= {"position_res_u_cm", "position_res_3d_cm", "energy_res_rel"}
    assert abs(classical["energy_bias_rel"]) < 1e-3  # calibrated on the same events: about zero by construction
    assert result["classical_calibration"]["scored_events"] is True and "timing_res_ns" not in classical
    assert classical["position_res_3d_cm"] < model["position_res_3d_cm"]  # an untrained model loses to the fit
    saved = json.loads((tmp_path / "val" / "validation.json").read_text())
    hist = saved["residual_histograms"]["position"]["u"]
    assert sum(hist["model"]["counts"]) <= kept.sum() and set(hist) == {"model", "classical"}
    assert set(saved["resolution_vs"]["energy"]) == {"u", "v", "w", "energy"}
    assert sorted(Path(p).name for p in saved["figures"]) == sorted(
        ["residuals.png", "resolution_vs_u.png", "resolution_vs_v.png", "resolution_vs_w.png",
         "resolution_vs_energy.png"])


def test_validate_calibrates_the_classical_estimates_on_a_labelled_file(sim_data, checkpoints, tmp_path, capsys):
    saved = tmp_path / "cal.json"
    labelled = str(sorted(Path(sim_data["dir"]).glob("train_*.root"))[0])  # 96 events
    argv = ["validate", "--checkpoint", checkpoints["reg"], "--input", sim_data["val"], "--output",
            str(tmp_path / "val"), "--calibration", labelled, "--save-calibration", str(saved)]
    assert main(argv) == 0
    assert "calibrated on 96 labelled events" in capsys.readouterr().out
    report = json.loads((tmp_path / "val" / "validation.json").read_text())
    assert report["classical_calibration"] == {"scored_events": False, "source": labelled, "events": 96}
    classical = report["metrics"]["classical"]
    # the ideal detector: calibrated on other events, the classical estimates are near the truth
    assert classical["position_res_u_cm"] < 1.0 and classical["timing_res_ns"] < 0.3
    assert classical["energy_res_rel"] < 0.1 and abs(classical["energy_bias_rel"]) > 0  # not fitted on these
    notes = report["classical_estimates"]
    assert "timing" in notes and "96 labelled events" in notes["energy"]
    stored = ClassicalCalibration.load(saved)
    assert (stored.events, stored.source) == (96, labelled)
    _one_error_line(capsys, [*argv[:-4], "--calibration", sim_data["val"]], "are also scored")


def _one_error_line(capsys, argv: list[str], expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith(f"xecmae {argv[0]}: error:")]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1], err  # one line, the last
    assert expected in errors[0], err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_bad_inputs_are_refused_with_one_line_and_nothing_written(sim_data, checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    reg, inp = checkpoints["reg"], checkpoints["inp"]
    garbage = tmp_path / "random.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(reg).read_bytes()[:20000])
    with uproot.open(sim_data["val"]) as f:
        arrays = f["tree"].arrays(["npho", "run", "event"], library="np")
    write_tree(str(tmp_path / "no_time.root"), [arrays])
    with uproot.open(sim_data["val"]) as f:
        arrays = f["tree"].arrays(["npho", "relative_time"], library="np")
    write_tree(str(tmp_path / "no_truth.root"), [arrays])
    val = sim_data["val"]
    cases = [
        (["validate", "--checkpoint", inp, "--input", val, "--output", str(out / "v")],
         "is an inpainter checkpoint; a resolution report needs a regressor checkpoint"),
        (["export", "--checkpoint", reg, "--part", "inpainter", "--output", str(out / "m.onnx")],
         "is a regressor checkpoint; exporting the inpainter needs an inpainter or MAE checkpoint"),
        (["predict", "--checkpoint", str(garbage), "--input", val, "--output", str(out / "r.root")],
         "cannot be read as a plain-data checkpoint"),
        (["predict", "--checkpoint", str(truncated), "--input", val, "--output", str(out / "r.root")],
         "cannot be read as a plain-data checkpoint"),
        (["predict", "--checkpoint", reg, "--input", str(tmp_path / "no_time.root"), "--output", str(out / "r.root")],
         "has no branch 'relative_time'"),
        (["validate", "--checkpoint", reg, "--input", str(tmp_path / "no_truth.root"), "--output", str(out / "v")],
         "has no branch 'emiAng', 'energyTruth', 'timeTruth', 'uvwTruth'"),
        (["predict", "--checkpoint", reg, "--input", val, "--output", str(tmp_path / "nowhere" / "r.root")],
         "directory " + str(tmp_path / "nowhere") + " does not exist"),
        (["predict", "--checkpoint", reg, "--input", val, "--output", str(out)], "it is a directory"),
        (["validate", "--checkpoint", reg, "--input", val, "--output", str(tmp_path / "random.pth")],
         "it is a file, not a folder"),
        (["export", "--checkpoint", reg, "--format", "tflite", "--output", str(out / "m.tflite")],
         "unknown export format 'tflite'; choose one of onnx, torchscript"),
    ]
    for argv, expected in cases:
        _one_error_line(capsys, argv, expected)
    assert _leftovers(out) == []


def test_a_checkpoint_of_the_original_implementation_is_recognised(tmp_path, capsys):
    state = {"encoder.cnn_inner.stem.0.weight": torch.zeros(4, 2, 4, 4), "encoder.pos_embed": torch.zeros(1, 6, 8),
             "decoder_inner.fc.weight": torch.zeros(8, 8)}
    save_checkpoint({"model_state_dict": state, "epoch": 20, "config": {"encoder_dim": 1024, "mask_ratio": 0.6}},
                    tmp_path / "original.pth")
    _one_error_line(capsys, ["predict", "--checkpoint", str(tmp_path / "original.pth"), "--input", "x.root",
                             "--output", str(tmp_path / "o.root")],
                    "a checkpoint of the original implementation, not of xecmae (its encoder layers have other "
                    "names (e.g. 'encoder.cnn_inner.stem.0.weight'))")
    ours = {"encoder.face_embedding": torch.zeros(1, 6, 128)}
    save_checkpoint({"model_state_dict": ours, "config": {"encoder_dim": 128}}, tmp_path / "flat.pth")
    _one_error_line(capsys, ["export", "--checkpoint", str(tmp_path / "flat.pth"), "--output",
                             str(tmp_path / "m.onnx")], "its configuration has no 'model' section (keys: encoder_dim)")


def test_fine_tuning_takes_the_encoder_shape_from_the_checkpoint(checkpoints):
    def cfg(**model):
        return validate({"model": model, "checkpoint": {"resume_from": checkpoints["mae64"]}}, RegressorConfig)

    adopted = adopt_architecture(cfg()).model  # no size, no dimensions given: all from the checkpoint
    shape = (adopted.encoder_dim, adopted.num_heads, adopted.num_fusion_layers, adopted.dim_feedforward)
    assert shape == (64, 2, 1, 256)
    build_regressor(adopt_architecture(cfg()))  # and the model builds
    with pytest.raises(ConfigError, match=r"model\.encoder_dim: checkpoint 64, configuration 128"):
        adopt_architecture(cfg(encoder_dim=128))
    with pytest.raises(ConfigError, match=r"checkpoint 64, configuration 1024 \(from model\.size 'base'\)"):
        adopt_architecture(cfg(size="base"))


def test_bare_encoder_weights_tell_their_shape():
    mae = build_mae(validate({"model": {"size": "tiny", "encoder_dim": 96, "num_heads": 2, "num_fusion_layers": 3}}))
    bare = {k.removeprefix("encoder."): v for k, v in mae.state_dict().items() if k.startswith("encoder.")}
    assert inferred_architecture(bare) == {"encoder_dim": 96, "num_fusion_layers": 3, "dim_feedforward": 256}


def test_size_flag_against_a_yaml_with_other_dimensions_is_refused_not_merged():
    yaml = REPO / "config" / "mae" / "mae_config.yaml"
    with pytest.raises(ConfigError, match=r"--size tiny contradicts the YAML \(model\.size 'tiny' has encoder_dim 128, "
                                          r".*mae_config\.yaml sets model\.encoder_dim: 1024"):
        load_config(yaml, {"model.size": "tiny"})
    dims = {"model.size": "tiny", "model.encoder_dim": 128, "model.decoder_dim": 32, "model.num_fusion_layers": 1}
    assert load_config(yaml, dims).model.encoder_dim == 128  # every clashing dimension given as a flag: fine
    assert load_config(yaml).model.encoder_dim == 1024
