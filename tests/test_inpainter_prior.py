"""The inpainter's classical prior (model.prior): what it computes, how the model uses it, and training with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import uproot

from xecmae.analysis import baselines as bl
from xecmae.apps.fill import fill_dead_channels
from xecmae.config import InpainterConfig
from xecmae.configload import validate
from xecmae.detector.normalize import Normalizer
from xecmae.models import build_mae
from xecmae.models.masking import hide
from xecmae.models.priors import classical_prior
from xecmae.simulate import EventGenerator
from xecmae.train.checkpoint import load_checkpoint, save_checkpoint
from xecmae.train.losses import LossSettings, mae_loss

NORM = Normalizer()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.fixture(scope="module")
def events():
    """Four realistic events (dead channels included) and a seeded 5% mask of their valid sensors."""
    ev = EventGenerator(seed=5, detector="realistic", dead_fraction=0.02).generate(4)
    x, valid = NORM(torch.from_numpy(ev["npho"]), torch.from_numpy(ev["relative_time"]))
    hidden = (torch.rand(valid.shape[:2], generator=torch.Generator().manual_seed(1)) < 0.05) & valid[..., 0]
    return ev, x, valid, hidden


def inpainter(prior: str = "solid_angle", **model):
    torch.manual_seed(0)
    cfg = validate({"model": {"size": "tiny", "prior": prior, **model}}, InpainterConfig)
    return cfg, build_mae(cfg)


@pytest.mark.parametrize("device", DEVICES)
def test_the_solid_angle_prior_is_the_cpu_baseline(events, device):
    ev, x, valid, hidden = events
    x_in, valid_in = hide(x, valid, hidden, NORM.sentinel_npho, NORM.sentinel_time)
    prior = classical_prior(x_in.to(device), valid_in.to(device), NORM, "solid_angle", 2, fit_iterations=30).cpu()
    known_n, known_t = valid_in[..., 0].numpy(), valid_in[..., 1].numpy()
    npho = np.where(known_n, ev["npho"], 0.0)
    time_ns = np.where(known_t, ev["relative_time"], 0.0) * 1e9
    ref = bl.predict(npho, known_n, time_ns, known_t)["solid_angle_avg"]  # float64, fitted to convergence
    photons = NORM.npho_inverse(prior[..., 0].double())
    bright = ref["npho"] > 10.0
    rel = ((photons - ref["npho"]).abs() / ref["npho"])[bright]
    assert rel.max() < 1e-3, rel.max()
    time_ref = ref["time"] * 1e-9
    np.testing.assert_allclose(NORM.time_inverse(prior[..., 1].double()).numpy(), time_ref.numpy(), atol=2e-12)
    neighbour = classical_prior(x_in.to(device), valid_in.to(device), NORM, "neighbour", 2).cpu()
    ref_nb = bl.neighbour_average(npho, known_n)
    bright = ref_nb > 10.0
    assert ((NORM.npho_inverse(neighbour[..., 0].double()) - ref_nb).abs() / ref_nb)[bright].max() < 1e-4


def test_the_prior_knows_where_the_light_comes_from(events):
    """On realistic events the solid-angle prior beats the neighbour one on the hidden sensors."""
    ev, x, valid, hidden = events
    x_in, valid_in = hide(x, valid, hidden, NORM.sentinel_npho, NORM.sentinel_time)
    scored = (hidden & (torch.from_numpy(ev["npho"]) >= 100)).numpy()
    truth = ev["npho"][scored]
    errors = {kind: np.median(np.abs(NORM.npho_inverse(classical_prior(x_in, valid_in, NORM, kind, 1)[..., 0]
                                                       ).numpy()[scored] - truth) / truth)
              for kind in ("neighbour", "solid_angle")}
    assert errors["solid_angle"] < 0.97 * errors["neighbour"], errors


def test_shapes_gradients_and_the_untrained_inpainter_is_its_prior(events):
    _, x, valid, hidden = events
    x, valid, hidden = x[:2], valid[:2], hidden[:2]
    _, model = inpainter()
    out = model(x, valid, hidden=hidden)
    assert out.pred.shape == (2, 4760, 2) and torch.isfinite(out.pred).all()
    x_in, valid_in = hide(x, valid, hidden, NORM.sentinel_npho, NORM.sentinel_time)
    prior = classical_prior(x_in, valid_in, NORM, "solid_angle", 2)
    torch.testing.assert_close(out.pred, prior, rtol=0, atol=0)  # zero-initialised corrections
    for refiner in model.refiners.values():  # move the output layers off zero so every layer sees a gradient
        torch.nn.init.normal_(refiner.out.weight, std=0.01)
    out = model(x, valid, hidden=hidden)
    loss, _ = mae_loss(out.pred, x, valid, out.hidden, NORM, LossSettings(), model.channel_log_var)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    silent = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0
              and "gamma" not in n]
    assert not missing and not silent, (missing, silent)


def test_the_residual_target_round_trips(events):
    """pred - prior is exactly the refiners' correction, sensor by sensor (the residual in normalized space)."""
    _, x, valid, hidden = events
    x, valid, hidden = x[:2], valid[:2], hidden[:2]
    _, model = inpainter()
    with torch.no_grad():
        for refiner in model.refiners.values():
            refiner.out.bias.copy_(torch.tensor([0.25, -0.5]))
        out = model(x, valid, hidden=hidden)
    x_in, valid_in = hide(x, valid, hidden, NORM.sentinel_npho, NORM.sentinel_time)
    residual = out.pred - classical_prior(x_in, valid_in, NORM, "solid_angle", 2)
    torch.testing.assert_close(residual, torch.tensor([0.25, -0.5]).expand_as(residual), rtol=0, atol=1e-6)


def test_the_prior_option_is_checked_and_travels_with_the_config():
    with pytest.raises(Exception, match="prior 'solid_angle' needs refine: true"):
        validate({"model": {"prior": "solid_angle", "refine": False}}, InpainterConfig)
    with pytest.raises(Exception, match=r"model\.prior"):
        validate({"model": {"prior": "solid"}}, InpainterConfig)
    assert InpainterConfig().model.prior == "neighbour"  # the default inpainter is unchanged
    cfg, model = inpainter(prior_fit_iterations=1)
    assert (model.prior, model.prior_fit_iterations) == ("solid_angle", 1)
    assert build_mae(validate(cfg.model_dump(mode="json"), InpainterConfig)).prior == "solid_angle"


def test_filling_with_the_solid_angle_prior_keeps_healthy_channels_bit_for_bit(tmp_path):
    from xecmae.simulate import write_root

    source = tmp_path / "run.root"
    write_root(source, 12, EventGenerator(seed=8, detector="realistic", dead_fraction=0.02), progress=False)
    cfg, model = inpainter()
    save_checkpoint({"kind": "inpainter", "model_state_dict": model.state_dict(), "ema_state_dict": None,
                     "config": cfg.model_dump(mode="json")}, tmp_path / "inpainter.pth")
    out = tmp_path / "filled.root"
    fill_dead_channels(tmp_path / "inpainter.pth", source, out, chunk_events=8, batch_size=4)
    with uproot.open(source) as f:
        before = f["tree"].arrays(library="np")
    with uproot.open(out) as f:
        after = f["tree"].arrays(library="np")
    dead = ~np.isfinite(before["npho"]) | (np.abs(before["npho"]) > 9e9)
    assert dead.sum() > 0
    np.testing.assert_array_equal(after["filled"], dead)
    for branch in before:
        healthy = ~dead if before[branch].shape[1:] == (4760,) else slice(None)
        np.testing.assert_array_equal(after[branch][healthy], before[branch][healthy])
    assert np.isfinite(after["npho"][dead]).all() and (np.abs(after["npho"][dead]) < 1e9).all()


def test_a_tiny_inpainter_trains_with_the_solid_angle_prior(sim_data, tmp_path):
    from xecmae.train.inpaint import inpaint

    raw = {"data": {"train_path": sim_data["train"], "val_path": sim_data["val"], "batch_size": 16,
                    "chunksize": 64, "num_workers": 0, "shuffle_buffer": 64, "val_max_events": 16},
           "model": {"size": "tiny", "prior": "solid_angle", "prior_fit_iterations": 2},
           "training": {"epochs": 1, "max_steps": 2, "lr": 1e-3, "warmup_epochs": 0, "seed": 2},
           "checkpoint": {"save_dir": str(tmp_path), "run_name": "inp", "save_predictions": False,
                          "save_every_steps": 0}, "mlflow": {"enabled": False}}
    run = inpaint(validate(raw, InpainterConfig))
    ckpt = load_checkpoint(run / "inpainter_checkpoint_last.pth")
    assert ckpt["kind"] == "inpainter" and ckpt["config"]["model"]["prior"] == "solid_angle"
    assert ckpt["step"] == 2
    moved = [k for k, v in ckpt["model_state_dict"].items() if k.startswith("refiners.") and k.endswith("out.weight")
             and v.abs().sum() > 0]
    assert moved  # the corrections left zero: the prior's residual was learned from
    assert all(np.isfinite(v) for row in ckpt["history"] for k, v in row.items() if isinstance(v, float))
