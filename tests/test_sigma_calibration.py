"""Calibration of the per-event sigma (xecmae calibrate): pulls of width 1, nothing else changed."""

import numpy as np
import pytest
import torch
import uproot

from xecmae.apps.graphs import make_graph
from xecmae.apps.predict import predict_regression
from xecmae.apps.sigmacal import fitted_scales, pull_widths
from xecmae.apps.trained import SIGMA_CALIBRATION, load_trained
from xecmae.apps.validate import validate_regressor
from xecmae.cli import main
from xecmae.config import RegressorConfig
from xecmae.configload import validate
from xecmae.models.regressor import LOG_VAR, TASK_TARGETS, build_regressor
from xecmae.simulate import EventGenerator, write_root
from xecmae.train.checkpoint import load_checkpoint, save_checkpoint

NLL = {"task_loss_fn": {"position": "gaussian_nll", "energy": "gaussian_nll"}}


def test_the_fitted_scale_makes_the_pulls_of_new_events_one_wide():
    rng = np.random.default_rng(3)
    true_sigma = rng.uniform(0.5, 2.0, (2, 20000, 3))  # two independent samples: fit on one, check on the other
    truth = rng.normal(0.0, 1.0, (2, 20000, 3)) * true_sigma
    claimed = true_sigma * np.array([1.3, 0.8, 1.0])  # too wide in u, too narrow in v, right in w
    data = {"pred": {"position": np.zeros((20000, 3))}, "truth": {"position": truth[0]},
            "sigma": {"position": claimed[0]}}
    (scales,) = fitted_scales(data, np.ones(20000, bool))["position"]  # one energy bin
    np.testing.assert_allclose(scales, [1 / 1.3, 1 / 0.8, 1.0], rtol=0.03)
    held_out = pull_widths(np.zeros((20000, 3)), truth[1], claimed[1] * scales)
    np.testing.assert_allclose(held_out, 1.0, atol=0.03)
    np.testing.assert_allclose(pull_widths(np.zeros((20000, 3)), truth[1], claimed[1]), [1 / 1.3, 1 / 0.8, 1],
                               rtol=0.03)  # uncalibrated, the pulls are as wrong as the sigma


def nll_regressor(tasks=("position", "energy"), **training):
    cfg = validate({"model": {"size": "tiny", "tasks": list(tasks), "head": "maps", "classical_input": "pointfit"},
                    "training": training}, RegressorConfig)
    torch.manual_seed(0)
    return cfg, build_regressor(cfg).eval()


def test_calibrate_sigma_scales_only_the_sigma_and_refuses_what_does_not_fit():
    _, model = nll_regressor(**NLL)
    events = EventGenerator(seed=5).generate(4)
    x, valid = model.normalizer(torch.from_numpy(events["npho"]), torch.from_numpy(events["relative_time"]))
    with torch.no_grad():
        raw = model(x, valid)
        model.calibrate_sigma({"position": [2.0, 0.5, 1.0], "energy": [1.5]})
        calibrated = model(x, valid)
    for task in ("position", "energy"):
        torch.testing.assert_close(calibrated[task], raw[task], rtol=0, atol=0)
    sigma = {k: TASK_TARGETS[t].decode_sigma(out[t + LOG_VAR]) for k, out in (("raw", raw), ("cal", calibrated))
             for t in ("position",)}
    torch.testing.assert_close(sigma["cal"], sigma["raw"] * torch.tensor([2.0, 0.5, 1.0]))
    torch.testing.assert_close(calibrated["energy" + LOG_VAR], raw["energy" + LOG_VAR] + 2 * np.log(1.5))
    assert not any("log_var_shift" in k for k in model.state_dict())  # the weights stay what training wrote
    with pytest.raises(ValueError, match="3 positive"):
        model.calibrate_sigma({"position": [1.0, 1.0]})
    with pytest.raises(ValueError, match="3 positive"):
        model.calibrate_sigma({"position": [1.0, 0.0, 1.0]})
    with pytest.raises(ValueError, match="increasing edges"):
        model.calibrate_sigma({"position": [[1.0] * 3] * 3}, [0.05, 0.03])
    model.calibrate_sigma({"position": [[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]]}, [-10.0])  # every energy above the edge
    with torch.no_grad():
        binned = model(x, valid)
    assert (TASK_TARGETS["energy"].decode(raw["energy"]) > -10.0).all()
    torch.testing.assert_close(binned["position" + LOG_VAR], raw["position" + LOG_VAR] + 2 * np.log(3.0))
    torch.testing.assert_close(binned["energy" + LOG_VAR], raw["energy" + LOG_VAR])  # not named: uncalibrated
    with pytest.raises(ValueError, match="timing"):
        model.calibrate_sigma({"timing": [1.0]})


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigmacal")
    write_root(root / "labelled.root", 160, EventGenerator(seed=31, detector="ideal"), progress=False)
    cfg, model = nll_regressor(**NLL)
    save_checkpoint({"kind": "regressor", "model_state_dict": model.state_dict(),
                     "config": cfg.model_dump(mode="json"), "epoch": 1}, root / "reg.pth")
    cfg, plain = nll_regressor()
    save_checkpoint({"kind": "regressor", "model_state_dict": plain.state_dict(),
                     "config": cfg.model_dump(mode="json"), "epoch": 1}, root / "plain.pth")
    return root


def test_the_calibrated_checkpoint_has_pulls_of_width_one_and_the_same_predictions(labelled, capsys):
    reg, cal, data = labelled / "reg.pth", labelled / "cal.pth", str(labelled / "labelled.root")
    assert main(["calibrate", "--checkpoint", str(reg), "--input", data, "--output", str(cal), "--batch", "64"]) == 0
    printed = capsys.readouterr().out
    assert "position   u" in printed and "energy" in printed and str(cal) in printed
    stored = load_checkpoint(cal)[SIGMA_CALIBRATION]
    assert set(stored["scales"]) == {"position", "energy"} and stored["events"] >= 50
    before = validate_regressor(reg, data, labelled / "before", classical=False, plots=False)["metrics"]["model"]
    after = validate_regressor(cal, data, labelled / "after", classical=False, plots=False)["metrics"]["model"]
    (position,), ((energy,),) = stored["scales"]["position"], stored["scales"]["energy"]  # one energy bin
    for key, scale in (("position_pull_width_u", position[0]), ("position_pull_width_w", position[2]),
                       ("energy_pull_width", energy)):
        assert before[key] == pytest.approx(scale, rel=1e-5)  # the scale is the width it removes
        assert after[key] == pytest.approx(1.0, rel=1e-4)
    assert after["position_res_u_cm"] == before["position_res_u_cm"]
    for name in ("reg", "cal"):
        predict_regression(labelled / f"{name}.pth", data, labelled / f"{name}.root", chunk_events=80, batch_size=64)
    with uproot.open(labelled / "reg.root") as a, uproot.open(labelled / "cal.root") as b:
        ra, rb = a["tree"].arrays(library="np"), b["tree"].arrays(library="np")
    np.testing.assert_array_equal(ra["uvwPred"], rb["uvwPred"])
    np.testing.assert_allclose(rb["uvwSigma"], ra["uvwSigma"] * np.asarray(position, np.float32), rtol=1e-5)
    np.testing.assert_allclose(rb["energySigma"], ra["energySigma"] * energy, rtol=1e-5)
    events = EventGenerator(seed=5).generate(3)
    npho, rel_time = torch.from_numpy(events["npho"]), torch.from_numpy(events["relative_time"])
    with torch.no_grad():  # the exported graph carries the calibration
        raw_graph = make_graph(load_trained(reg, ("regressor",), "a test"), "regressor")(npho, rel_time)
        cal_graph = make_graph(load_trained(cal, ("regressor",), "a test"), "regressor")(npho, rel_time)
    torch.testing.assert_close(cal_graph[2], raw_graph[2] * torch.tensor(position))
    again = labelled / "twice.pth"  # a calibration replaces the one before: the same scales again
    assert main(["calibrate", "--checkpoint", str(cal), "--input", data, "--output", str(again)]) == 0
    np.testing.assert_allclose(load_checkpoint(again)[SIGMA_CALIBRATION]["scales"]["position"],
                               stored["scales"]["position"], rtol=1e-5)


def test_energy_bins_give_each_event_the_scale_of_its_predicted_energy(labelled, capsys):
    reg, binned, data = labelled / "reg.pth", labelled / "binned.pth", str(labelled / "labelled.root")
    assert main(["calibrate", "--checkpoint", str(reg), "--input", data, "--output", str(binned),
                 "--energy-bins", "2", "--batch", "64"]) == 0
    assert "MeV" in capsys.readouterr().out
    stored = load_checkpoint(binned)[SIGMA_CALIBRATION]
    (edge,) = stored["energy_edges_gev"]
    scales = np.asarray(stored["scales"]["position"])  # (2 bins, 3)
    assert scales.shape == (2, 3) and not np.allclose(scales[0], scales[1])
    predict_regression(reg, data, labelled / "raw.root", chunk_events=80, batch_size=64)
    predict_regression(binned, data, labelled / "binned.root", chunk_events=80, batch_size=64)
    with uproot.open(labelled / "raw.root") as a, uproot.open(labelled / "binned.root") as b:
        raw, cal = a["tree"].arrays(library="np"), b["tree"].arrays(library="np")
    high = raw["energyPred"] > edge
    assert 0 < high.sum() < len(high)
    np.testing.assert_allclose(cal["uvwSigma"], raw["uvwSigma"] * scales[high.astype(int)], rtol=1e-5)
    after = validate_regressor(binned, data, labelled / "b", classical=False, plots=False)["metrics"]["model"]
    assert after["position_pull_width_u"] == pytest.approx(1.0, abs=0.1)  # each bin is 1 wide, so is the whole
    assert main(["calibrate", "--checkpoint", str(reg), "--input", data, "--output", str(labelled / "y.pth"),
                 "--energy-bins", "5"]) == 2  # 160 events cannot fill five bins of 50
    assert "at least 50 per energy bin" in capsys.readouterr().err


def test_calibrate_refuses_a_model_without_sigma_and_overwriting_its_checkpoint(labelled, capsys):
    data = str(labelled / "labelled.root")
    assert main(["calibrate", "--checkpoint", str(labelled / "plain.pth"), "--input", data,
                 "--output", str(labelled / "x.pth")]) == 2
    assert "no task of this regressor was trained with gaussian_nll" in capsys.readouterr().err
    assert main(["calibrate", "--checkpoint", str(labelled / "reg.pth"), "--input", data,
                 "--output", str(labelled / "reg.pth")]) == 2
    assert "is the checkpoint itself" in capsys.readouterr().err
    assert not (labelled / "x.pth").exists()


@pytest.mark.parametrize(("losses", "hint"), [({}, False), (NLL, True)])
def test_finetune_says_how_to_calibrate_a_model_with_sigmas(monkeypatch, tmp_path, capsys, losses, hint):
    import xecmae.train.finetune

    monkeypatch.setattr(xecmae.train.finetune, "finetune", lambda cfg, plot=None, hooks=(): tmp_path / "run")
    argv = ["finetune", "--train_root", "train.root", "--val_root", "val.root", "--mlflow.enabled", "false"]
    if losses:
        argv += ["--task_loss_fn", "{position: gaussian_nll, energy: gaussian_nll}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"run directory: {tmp_path / 'run'}" in printed
    assert ("xecmae calibrate --checkpoint" in printed and "--input val.root" in printed) == hint
