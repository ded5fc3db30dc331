"""Robustness against dead channels: the report's machinery, and fine-tuning with random dead channels."""

import contextlib
import json

import numpy as np
import pytest
import torch

from conftest import tiny_config
from xecmae.apps.robustness import dead_map_bank, parse_fractions
from xecmae.cli import main
from xecmae.config import InpainterConfig, RegressorConfig
from xecmae.configload import validate
from xecmae.detector import geometry as geo
from xecmae.detector.normalize import Normalizer
from xecmae.errors import UserError
from xecmae.models import build_mae
from xecmae.models.regressor import build_regressor
from xecmae.simulate import clustered_dead_mask
from xecmae.train.checkpoint import load_checkpoint, save_checkpoint
from xecmae.train.deadtraining import DeadChannelObjective, draw_dead_channels, hide_channels
from xecmae.train.finetune import finetune


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Tiny untrained regressor (position, energy) and inpainter checkpoints."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    cfg = validate({"model": {"size": "tiny", "tasks": ["position", "energy"]}}, RegressorConfig)
    save_checkpoint({"kind": "regressor", "model_state_dict": build_regressor(cfg).state_dict(),
                     "config": cfg.model_dump(mode="json")}, root / "reg.pth")
    inp = validate({"model": {"size": "tiny"}}, InpainterConfig)
    save_checkpoint({"kind": "inpainter", "model_state_dict": build_mae(inp).state_dict(),
                     "config": inp.model_dump(mode="json")}, root / "inp.pth")
    return {"reg": str(root / "reg.pth"), "inp": str(root / "inp.pth")}


def test_the_robustness_report_runs_every_method_on_the_same_dead_channels(sim_data, models, tmp_path, capsys):
    out = tmp_path / "rob"
    argv = ["validate", "--robustness", "--checkpoint", models["reg"], "--input", sim_data["val"], "--output",
            str(out), "--dead-fractions", "0,0.1", "--max-events", "6", "--inpainter", models["inp"],
            "--dead-trained", models["reg"], "--batch", "8"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "robustness.json").read_text())
    assert {p.name for p in out.iterdir()} == {"robustness.json", "robustness.md", "robustness.png"}
    assert (out / "robustness.png").stat().st_size > 10_000
    assert result["events"]["read"] == 6 and 2 < result["events"]["fiducial"] <= 6
    zero, ten = result["levels"]
    assert [zero["fraction"], ten["fraction"]] == [0.0, 0.1]
    assert zero["dead_total_mean"] < 0.02 and 0.1 <= ten["dead_total_mean"] < 0.12  # added on top of the file's 1%
    methods = ["sentinel", "neighbour", "inpainter", "dead_trained", "dead_trained_inpainter", "classical"]
    for level in result["levels"]:
        assert list(level["methods"]) == methods
        for figs in level["methods"].values():
            assert set(figs) == {"u", "v", "w", "energy"}
            assert all(f["res"] > 0 and f["err"] > 0 for f in figs.values())
    # the second regressor is the same checkpoint: on the same dead channels it gives the same figures
    assert ten["methods"]["dead_trained"] == ten["methods"]["sentinel"]
    assert ten["methods"]["dead_trained_inpainter"] == ten["methods"]["inpainter"]
    # the dead channels reach the model: 10% dead moves its figures, filling them moves them again
    assert ten["methods"]["sentinel"]["energy"]["res"] != zero["methods"]["sentinel"]["energy"]["res"]
    assert ten["methods"]["neighbour"]["energy"] != ten["methods"]["sentinel"]["energy"]
    assert zero["methods"]["sentinel"]["u"]["ratio"] == 1.0 and zero["methods"]["sentinel"]["u"]["ratio_err"] == 0.0
    assert ten["methods"]["neighbour"]["energy"]["ratio_err"] > 0
    table = (out / "robustness.md").read_text()
    assert table in printed and table.count("\n| 10% |") == len(methods)
    assert "regressor, inpainter fill" in table and "classical, dead dropped" in table


def test_without_an_inpainter_that_way_is_skipped_with_a_note(sim_data, models, tmp_path):
    from xecmae.apps.robustness import robustness

    result = robustness(models["reg"], sim_data["val"], tmp_path / "r", fractions=[0.05], max_events=4,
                        classical=False, plots=False, batch_size=4)
    assert list(result["levels"][0]["methods"]) == ["sentinel", "neighbour"]
    assert "no inpainter given" in result["notes"][0]
    assert "Note: no inpainter given" in (tmp_path / "r" / "robustness.md").read_text()


def test_the_dead_maps_are_the_generators_and_fractions_are_checked():
    bank = dead_map_bank(0.05, "clustered", seed=3, maps=4)
    assert bank.shape == (4, 4760)
    np.testing.assert_array_equal(bank[2], clustered_dead_mask(0.05, 3, 2))
    assert len({m.tobytes() for m in bank}) == 4  # four different maps
    assert parse_fractions("0, 0.01,0.1") == (0.0, 0.01, 0.1)
    for bad in ("0,1.5", "a,b", ""):
        with pytest.raises(UserError, match="--dead-fractions"):
            parse_fractions(bad)


def test_random_dead_channels_per_event_follow_the_real_runs_faces_and_boards():
    gen = torch.Generator().manual_seed(4)
    dead = draw_dead_channels(200, 0.05, gen, torch.device("cpu"))
    assert (dead.sum(1) == round(0.05 * 4760)).all()  # exactly the fraction, every event
    assert len({row.numpy().tobytes() for row in dead}) == 200  # a new map per event
    face = geo.face_of_sensor()
    reference = np.stack([clustered_dead_mask(0.05, 0, k) for k in range(20)])
    for f in range(6):  # the generator's proportions per face
        assert abs(dead[:, face == f].float().mean().item() - reference[:, face == f].mean()) < 0.01
    inner = geo.face_sensor_ids(geo.FACE_NAMES[0])[:4080].reshape(-1, 16)  # whole boards of 16 ids

    def full_boards(masks: torch.Tensor) -> float:
        return float(masks[:, inner].all(-1).sum(1).float().mean())

    assert full_boards(dead) >= 2  # about half of the inner face's 24 dead channels are one or two boards
    scattered = draw_dead_channels(200, 0.05, gen, torch.device("cpu"), clustered=False)
    assert full_boards(scattered) == 0 and (scattered.sum(1) == 238).all()
    varying = draw_dead_channels(200, 0.1, gen, torch.device("cpu"), varying=True).sum(1).float()
    assert varying.min() < 0.2 * 476 and varying.max() > 0.8 * 476 and varying.max() <= 476
    again = draw_dead_channels(200, 0.05, torch.Generator().manual_seed(4), torch.device("cpu"))
    assert torch.equal(again, dead)  # seeded by the trainer's generator


def test_hidden_channels_look_dead_to_the_model_and_training_runs(sim_data, tmp_path):
    norm = Normalizer()
    npho = torch.full((2, 4760), 300.0)
    x, valid = norm(npho, torch.zeros(2, 4760))
    dead = torch.zeros(2, 4760, dtype=torch.bool)
    dead[0, [1, 2]] = True
    hx, hvalid = hide_channels(x, valid, dead, norm)
    dead_x, dead_valid = norm(torch.where(dead, 1e10, npho), torch.where(dead, 1e10, 0.0))
    assert torch.equal(hx, dead_x) and torch.equal(hvalid, dead_valid)
    # the objective sees a fifth of the channels dead in training batches, none in validation batches
    seen = []
    objective = DeadChannelObjective(lambda m, r, b, g, a, t: seen.append(b["valid"][..., 0].float().mean()),
                                     validate({"training": {"dead_channels": {"fraction": 0.2}}},
                                              RegressorConfig).training.dead_channels, norm)
    batch = {"x": x, "valid": valid}
    raw = type("Raw", (), {"normalizer": norm})
    objective(None, raw, batch, torch.Generator().manual_seed(0), None, True)
    objective(None, raw, batch, torch.Generator().manual_seed(0), None, False)
    assert abs(seen[0].item() - 0.8) < 1e-3 and seen[1].item() == 1.0
    # and a fine-tuning run with the option trains and records it
    cfg = tiny_config(sim_data, tmp_path, schema=RegressorConfig, model={"tasks": ["position"]},
                      data={"batch_size": 16, "val_max_events": 16},
                      training={"epochs": 1, "max_steps": 2, "dead_channels": {"fraction": 0.05, "varying": True}})
    ckpt = load_checkpoint(finetune(cfg) / "regressor_checkpoint_last.pth")
    assert ckpt["step"] == 2 and ckpt["config"]["training"]["dead_channels"]["fraction"] == 0.05
    assert all(torch.isfinite(v).all() for v in ckpt["model_state_dict"].values() if v.is_floating_point())


def test_the_training_fill_is_the_inference_fill_and_a_run_trains_with_it(sim_data, models, tmp_path):
    from xecmae.apps.fill import fill_chunk, load_inpainter
    from xecmae.train.deadtraining import InpainterFill

    norm = Normalizer()
    rng = np.random.default_rng(2)
    npho = rng.gamma(0.5, 400.0, (3, 4760)).astype(np.float32)  # many below the 100-photon time threshold
    time = rng.normal(2e-8, 1e-9, (3, 4760)).astype(np.float32)
    dead = torch.from_numpy(rng.random((3, 4760)) < 0.05)
    x, valid = hide_channels(*norm(torch.from_numpy(npho), torch.from_numpy(time)), dead, norm)
    filled_x, filled_valid = InpainterFill(models["inp"], norm)(x, valid, dead, contextlib.nullcontext)
    # the same events filled at inference: raw arrays with the dead channels at 1e10, then normalised
    ref_npho, ref_time, _ = fill_chunk(load_inpainter(models["inp"], torch.device("cpu")),
                                       np.where(dead, 1e10, npho).astype(np.float32),
                                       np.where(dead, 1e10, time).astype(np.float32), 8, torch.device("cpu"))
    ref_x, ref_valid = norm(torch.from_numpy(ref_npho), torch.from_numpy(ref_time))
    assert torch.equal(filled_valid, ref_valid) and not filled_valid[..., 1][dead].all()  # dim fills: no time
    torch.testing.assert_close(filled_x, ref_x, rtol=1e-5, atol=1e-5)
    assert torch.equal(filled_x[~dead], x[~dead]) and filled_valid[..., 0][dead].all()
    # the objective hands the regressor the filled batch: every npho valid again, a fifth of them changed
    seen = []
    spec = validate({"training": {"dead_channels": {"fraction": 0.2, "filler": models["inp"]}}}, RegressorConfig)
    objective = DeadChannelObjective(lambda m, r, b, g, a, t: seen.append(b), spec.training.dead_channels, norm)
    full_x, full_valid = norm(torch.from_numpy(npho), torch.from_numpy(time))
    objective(None, type("Raw", (), {"normalizer": norm}), {"x": full_x, "valid": full_valid},
              torch.Generator().manual_seed(0), contextlib.nullcontext, True)
    assert seen[0]["valid"][..., 0].all() and abs((seen[0]["x"] != full_x)[..., 0].float().mean() - 0.2) < 0.01
    with pytest.raises(UserError, match="normalisation"):
        InpainterFill(models["inp"], Normalizer(npho_scale=500.0))
    with pytest.raises(UserError, match="filler: checkpoint not found"):
        InpainterFill(str(tmp_path / "missing.pth"), norm)
    with pytest.raises(UserError, match=r"needs training\.dead_channels\.fraction > 0"):
        finetune(tiny_config(sim_data, tmp_path / "none", schema=RegressorConfig, model={"tasks": ["position"]},
                             training={"dead_channels": {"filler": models["inp"]}}))
    cfg = tiny_config(sim_data, tmp_path, schema=RegressorConfig, model={"tasks": ["position"]},
                      data={"batch_size": 16, "val_max_events": 16},
                      training={"epochs": 1, "max_steps": 2,
                                "dead_channels": {"fraction": 0.05, "filler": models["inp"]}})
    ckpt = load_checkpoint(finetune(cfg) / "regressor_checkpoint_last.pth")
    assert ckpt["step"] == 2 and ckpt["config"]["training"]["dead_channels"]["filler"] == models["inp"]


def test_the_paired_ratio_error_cancels_what_the_events_share():
    from xecmae.apps.robustness import bootstrap_width, paired_ratio_error

    rng = np.random.default_rng(4)
    reference = rng.normal(0.0, 1.0, 2000)
    slightly_worse = reference * 1.05 + rng.normal(0.0, 0.05, 2000)  # the same events, 5% wider
    err = paired_ratio_error(slightly_worse, reference)
    unpaired = np.hypot(bootstrap_width(slightly_worse), bootstrap_width(reference))  # relative, widths near 1
    assert 0 < err < unpaired / 4  # the shared event-to-event scatter cancels
    assert paired_ratio_error(reference, reference) == 0.0
    independent = rng.normal(0.0, 1.0, 2000)
    assert paired_ratio_error(independent, reference) == pytest.approx(unpaired, rel=0.3)
    assert np.isnan(paired_ratio_error(reference[:10], reference))
