"""Fine-tuning: checkpoint detection and loading, the regressor, freezing, and filling dead channels."""

import numpy as np
import pytest
import torch
import uproot

from conftest import tiny_config
from xecmae.analysis.plots import plot_regression
from xecmae.apps.fill import fill_dead_channels
from xecmae.config import ConfigError, InpainterConfig, RegressorConfig
from xecmae.configload import validate
from xecmae.detector.geometry import uvw_to_xyz
from xecmae.errors import UserError
from xecmae.models import build_mae
from xecmae.models.regressor import build_regressor
from xecmae.train.checkpoint import load_checkpoint, save_checkpoint
from xecmae.train.engine import RunSpec, build_trainer
from xecmae.train.finetune import RegressionObjective, encoder_lr_groups, finetune, init_regressor
from xecmae.train.initialize import checkpoint_kind


def regressor_config(sim_data, run_dir, **sections) -> RegressorConfig:
    """:func:`conftest.tiny_config` for a position regressor; keyword sections update it."""
    own = {"model": {"tasks": ["position"]}, "training": {"lr": 2e-3, "seed": 5}, "checkpoint": {"run_name": "reg"}}
    merged = {name: own.get(name, {}) | sections.get(name, {}) for name in own.keys() | sections.keys()}
    return tiny_config(sim_data, run_dir, schema=RegressorConfig, **merged)


@pytest.fixture()
def mae_checkpoint(tmp_path):
    """A tiny MAE checkpoint whose EMA weights differ from its raw weights."""
    def make(with_ema: bool = True, **model) -> str:
        cfg = validate({"model": {"size": "tiny", **model}})
        torch.manual_seed(1)
        mae = build_mae(cfg)
        raw = mae.state_dict()
        ema = {k: v + 0.5 if v.is_floating_point() else v for k, v in raw.items()}
        path = tmp_path / f"mae_{with_ema}_{len(model)}.pth"
        save_checkpoint({"kind": "mae", "model_state_dict": raw, "ema_state_dict": ema if with_ema else None,
                         "config": cfg.model_dump(mode="json"), "epoch": 7, "step": 99}, path)
        return str(path)
    return make


def regression_spec(cfg) -> RunSpec:
    return RunSpec(kind="regressor", build_model=build_regressor, objective=RegressionObjective(cfg), truth=True,
                   init_from=init_regressor(cfg), param_groups=encoder_lr_groups)


def test_checkpoint_kinds_are_told_apart(mae_checkpoint, tmp_path):
    mae = load_checkpoint(mae_checkpoint())
    assert checkpoint_kind(mae) == "mae"
    assert checkpoint_kind({"model_state_dict": {"heads.position.mlp.0.weight": torch.ones(1)}}) == "regressor"
    assert checkpoint_kind({k.removeprefix("encoder."): v for k, v in mae["model_state_dict"].items()
                            if k.startswith("encoder.")}) == "encoder"
    for garbage in ({"weights": "none"}, {"model_state_dict": {"foo.bar": torch.ones(1)}}, [1, 2], {}):
        with pytest.raises(UserError, match="not a checkpoint xecmae can start from"):
            checkpoint_kind(garbage, "x.pth")


@pytest.mark.parametrize("with_ema", [True, False])
def test_an_mae_checkpoint_gives_the_encoder_only_preferring_ema(sim_data, tmp_path, mae_checkpoint, with_ema):
    path = mae_checkpoint(with_ema)
    saved = load_checkpoint(path)
    source = saved["ema_state_dict"] if with_ema else saved["model_state_dict"]
    cfg = regressor_config(sim_data, tmp_path, checkpoint={"resume_from": path}, training={"ema_decay": 0.99})
    trainer = build_trainer(cfg, regression_spec(cfg), torch.device("cpu"), total_steps=10)
    for name, value in trainer.raw.encoder.state_dict().items():
        torch.testing.assert_close(value, source[f"encoder.{name}"])
        torch.testing.assert_close(trainer.ema.module.encoder.state_dict()[name], value)  # EMA from loaded
    assert trainer.state.epoch == 0 and trainer.state.step == 0  # counters reset
    assert not trainer.optimizer.state  # a fresh optimizer


def test_bare_encoder_weights_load_into_the_regressor(sim_data, tmp_path, mae_checkpoint):
    saved = load_checkpoint(mae_checkpoint(False))
    # shifted, so that no weight can equal what a freshly built encoder starts with
    bare = {k.removeprefix("encoder."): v + 0.5 if v.is_floating_point() else v
            for k, v in saved["model_state_dict"].items() if k.startswith("encoder.")}
    save_checkpoint(bare, tmp_path / "mae_encoder_epoch_3.pth")
    cfg = regressor_config(sim_data, tmp_path, checkpoint={"resume_from": str(tmp_path / "mae_encoder_epoch_3.pth")})
    trainer = build_trainer(cfg, regression_spec(cfg), torch.device("cpu"), total_steps=10)
    loaded = trainer.raw.encoder.state_dict()
    assert set(loaded) == set(bare)
    for name, value in bare.items():
        torch.testing.assert_close(loaded[name], value)


def test_mismatched_normalization_or_size_is_refused_with_both_values(sim_data, tmp_path, mae_checkpoint):
    path = mae_checkpoint()
    cfg = regressor_config(sim_data, tmp_path, checkpoint={"resume_from": path}, normalization={"npho_scale": 500})
    with pytest.raises(ConfigError, match=r"normalization\.npho_scale: checkpoint 1000\.0, configuration 500\.0"):
        build_trainer(cfg, regression_spec(cfg), torch.device("cpu"), total_steps=10)
    cfg = regressor_config(sim_data, tmp_path, checkpoint={"resume_from": path}, model={"encoder_dim": 256})
    with pytest.raises(ConfigError, match=r"model\.encoder_dim: checkpoint 128, configuration 256"):
        build_trainer(cfg, regression_spec(cfg), torch.device("cpu"), total_steps=10)
    bare = {k.removeprefix("encoder."): v for k, v in load_checkpoint(path)["model_state_dict"].items()
            if k.startswith("encoder.")}
    save_checkpoint(bare, tmp_path / "bare.pth")
    cfg = regressor_config(sim_data, tmp_path, checkpoint={"resume_from": str(tmp_path / "bare.pth")},
                           model={"encoder_dim": 256})
    with pytest.raises(ConfigError, match=r"face_embedding: checkpoint \(1, 6, 128\), model \(1, 6, 256\)"):
        build_trainer(cfg, regression_spec(cfg), torch.device("cpu"), total_steps=10)


def test_the_regressor_learns_position_and_resumes_its_own_checkpoint(sim_data, tmp_path):
    cfg = regressor_config(sim_data, tmp_path, training={"epochs": 3, "max_steps": 8})
    run = finetune(cfg)
    partial = load_checkpoint(run / "regressor_checkpoint_last.pth")
    assert checkpoint_kind(partial) == "regressor" and partial["step"] == 8
    resumed = finetune(regressor_config(sim_data, tmp_path, training={"epochs": 3},
                                        checkpoint={"resume_from": str(run / "regressor_checkpoint_last.pth")}),
                       plot=plot_regression)  # the plot is attached by the caller (the command line does)
    final = load_checkpoint(resumed / "regressor_checkpoint_last.pth")
    assert final["step"] == 18 and final["epoch"] == 3  # continued, not restarted
    # resolution against the best constant guess (the mean position)
    with uproot.open(sim_data["val"]) as f:
        uvw = f["tree"]["uvwTruth"].array(library="np")
    spread = np.percentile(np.linalg.norm(uvw_to_xyz(uvw) - uvw_to_xyz(uvw.mean(0)), axis=1), 68)
    resolution = final["history"][-1]["val/position_res_3d_cm"]
    assert resolution < 0.6 * spread, (resolution, spread)
    assert (resumed / "regression_epoch_3.png").stat().st_size > 10_000


def test_a_frozen_encoder_stays_put_and_the_encoder_can_learn_slower(sim_data, tmp_path, mae_checkpoint):
    path = mae_checkpoint(False)
    cfg = regressor_config(sim_data, tmp_path, checkpoint={"resume_from": path},
                           model={"freeze_encoder": True}, training={"epochs": 1, "max_steps": 2})
    run = finetune(cfg)
    after = load_checkpoint(run / "regressor_checkpoint_last.pth")["model_state_dict"]
    before = load_checkpoint(path)["model_state_dict"]
    for key, value in after.items():
        if key.startswith("encoder."):
            torch.testing.assert_close(value, before[key])
    cfg = regressor_config(sim_data, tmp_path, training={"encoder_lr": 1e-5, "lr": 1e-3})
    trainer = build_trainer(cfg, regression_spec(cfg), torch.device("cpu"), total_steps=10)
    encoder = {id(p) for p in trainer.raw.encoder.parameters()}
    for group in trainer.optimizer.param_groups:
        in_encoder = {id(p) in encoder for p in group["params"]}
        assert len(in_encoder) == 1  # no group mixes encoder and head parameters
        assert group["lr"] == (1e-5 if in_encoder.pop() else 1e-3)


def test_predict_fills_dead_channels_and_leaves_healthy_ones_untouched(sim_data, tmp_path):
    cfg = validate({"model": {"size": "tiny"}}, InpainterConfig)
    torch.manual_seed(0)
    model = build_mae(cfg)
    save_checkpoint({"kind": "inpainter", "model_state_dict": model.state_dict(), "ema_state_dict": None,
                     "config": cfg.model_dump(mode="json")}, tmp_path / "inpainter.pth")
    out = tmp_path / "filled.root"
    counts = fill_dead_channels(tmp_path / "inpainter.pth", sim_data["val"], out, chunk_events=24, batch_size=16)
    with uproot.open(sim_data["val"]) as f:
        before = f["tree"].arrays(library="np")
    with uproot.open(out) as f:
        after = f["tree"].arrays(library="np")
        assert f["tree"]["filled"].typename == "bool[4760]"
    dead = ~np.isfinite(before["npho"]) | (np.abs(before["npho"]) > 9e9)
    np.testing.assert_array_equal(after["filled"], dead)
    assert counts == {"events": 64, "filled_channels": int(dead.sum())} and dead.sum() > 0
    for branch in before:
        healthy = ~dead if before[branch].shape[1:] == (4760,) else slice(None)
        np.testing.assert_array_equal(after[branch][healthy], before[branch][healthy])
    assert np.isfinite(after["npho"][dead]).all() and (np.abs(after["npho"][dead]) < 1e9).all()
    assert np.isfinite(after["relative_time"][dead]).all()


def test_predict_refuses_a_regression_checkpoint(sim_data, tmp_path):
    cfg = validate({"model": {"size": "tiny"}}, RegressorConfig)
    save_checkpoint({"kind": "regressor", "model_state_dict": build_regressor(cfg).state_dict(),
                     "config": cfg.model_dump(mode="json")}, tmp_path / "reg.pth")
    with pytest.raises(UserError, match="regressor checkpoint"):
        fill_dead_channels(tmp_path / "reg.pth", sim_data["val"], tmp_path / "out.root")


def test_the_inpainter_config_defaults_follow_the_shared_parameter_table():
    m = InpainterConfig().model
    assert m.mask_ratio == 0.05 and m.freeze_encoder is False
    t = InpainterConfig().training
    assert t.time.mask_ratio_scale == 1.0 and t.time.npho_threshold == 100 and t.time.use_npho_weight
    assert not t.track_mae_rmse and not t.track_metrics


def test_the_inpainter_beats_the_neighbour_average_on_hidden_sensors(sim_data, tmp_path):
    raw = {"data": {"train_path": sim_data["train"], "val_path": sim_data["val"], "batch_size": 32,
                    "chunksize": 64, "num_workers": 0, "shuffle_buffer": 64},
           # trained at a higher mask ratio for more signal per step, evaluated at the default 0.05
           "model": {"size": "tiny", "mask_ratio": 0.2},
           "training": {"epochs": 6, "lr": 3e-3, "warmup_epochs": 0, "seed": 2},
           "checkpoint": {"save_dir": str(tmp_path), "run_name": "inp", "save_predictions": False,
                          "save_every_steps": 0}, "mlflow": {"enabled": False}}
    from xecmae.analysis.baselines import neighbour_average
    from xecmae.apps.fill import load_inpainter
    from xecmae.train.inpaint import inpaint

    run = inpaint(validate(raw, InpainterConfig))
    model = load_inpainter(run / "inpainter_checkpoint_best.pth", torch.device("cpu"))
    model.masking.mask_ratio = 0.05
    with uproot.open(sim_data["val"]) as f:
        arrays = f["tree"].arrays(["npho", "relative_time"], library="np")
    norm = model.normalizer
    x, valid = norm(torch.from_numpy(arrays["npho"]), torch.from_numpy(arrays["relative_time"]))
    with torch.no_grad():
        out = model(x, valid, generator=torch.Generator().manual_seed(0))  # 5% hidden
    scored = (out.hidden & valid[..., 0]).numpy()
    truth = arrays["npho"]
    known = (valid[..., 0] & ~out.hidden).numpy()
    baseline = neighbour_average(np.where(known, truth, 0.0), known).numpy()
    pred = out.pred[..., 0].numpy()
    errors = {  # mean absolute error over the hidden sensors: normalized units (the loss's), photons
        "normalized": (np.abs(pred - x[..., 0].numpy())[scored].mean(),
                       np.abs(norm.npho_forward(baseline) - x[..., 0].numpy())[scored].mean()),
        "photons": (np.abs(norm.npho_inverse(pred) - truth)[scored].mean(), np.abs(baseline - truth)[scored].mean()),
    }
    assert errors["normalized"][0] < 0.97 * errors["normalized"][1], errors
    assert errors["photons"][0] < errors["photons"][1], errors
