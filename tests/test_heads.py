"""Regression heads that localise (maps, soft-argmax, classical input) and the Gaussian NLL's per-event sigma."""

import numpy as np
import pytest
import torch
import uproot

from conftest import tiny_config
from xecmae.analysis.classical import classical_features
from xecmae.apps.export import export_model, onnx_parity
from xecmae.apps.graphs import make_graph
from xecmae.apps.predict import predict_regression
from xecmae.apps.trained import load_trained
from xecmae.apps.validate import validate_regressor
from xecmae.config import RegressorConfig
from xecmae.configload import validate
from xecmae.detector import geometry as geo
from xecmae.detector.light import solid_angle_fraction
from xecmae.detector.pointsource import fit_point_source
from xecmae.models import build_mae
from xecmae.models.heads import LOG_PHOTONS_REF, LOG_VAR_RANGE, bounded_log_var, key_positions, stage2_centres
from xecmae.models.regressor import LOG_VAR, TASK_TARGETS, build_regressor
from xecmae.models.spec import EncoderConfig
from xecmae.simulate import EventGenerator
from xecmae.train.checkpoint import load_checkpoint, save_checkpoint
from xecmae.train.engine import RunSpec, build_trainer
from xecmae.train.finetune import RegressionObjective, encoder_lr_groups, finetune, init_regressor
from xecmae.train.losses import gaussian_nll
from xecmae.train.resolution import pull_metrics

NLL = {"task_loss_fn": {"position": "gaussian_nll", "energy": "gaussian_nll"}}


def regressor_cfg(**model) -> RegressorConfig:
    return validate({"model": {"size": "tiny", "tasks": ["position", "energy"], **model}, "training": NLL},
                    RegressorConfig)


@pytest.fixture(scope="module")
def events():
    return EventGenerator(seed=21, dead_fraction=0.02).generate(64)


def inputs(model, events, n=4):
    return model.normalizer(torch.from_numpy(events["npho"][:n]), torch.from_numpy(events["relative_time"][:n]))


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("classical", ["none", "centroid", "pointfit", "pointfit_time"])
@pytest.mark.parametrize("head", ["tokens", "maps"])
def test_every_head_gives_its_shapes_and_every_trainable_parameter_a_gradient(events, head, classical, frozen):
    torch.manual_seed(0)
    model = build_regressor(regressor_cfg(head=head, classical_input=classical, freeze_encoder=frozen)).train()
    with torch.no_grad():  # off the zero initialisations, so that no gradient is zero by construction
        for p in model.heads.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = model(*inputs(model, events))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"position": (4, 3), "position" + LOG_VAR: (4, 3),
                                                          "energy": (4, 1), "energy" + LOG_VAR: (4, 1)}
    sum(v.square().sum() for v in out.values()).backward()
    for name, p in model.named_parameters():
        if frozen and name.startswith("encoder."):
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_the_maps_give_the_same_tokens_and_the_default_head_is_the_specifications(events):
    torch.manual_seed(0)
    cfg = validate({"model": {"size": "tiny", "tasks": ["position", "energy"]}}, RegressorConfig)
    model = build_regressor(cfg).eval()
    x, valid = inputs(model, events)
    tokens, maps = model.encoder.forward_maps(x, valid)
    assert torch.equal(tokens, model.encoder(x, valid))
    assert maps["inner"].shape[2:] == (46, 21) and maps["top"].shape == (4, 73, 96)
    out = model(x, valid)
    assert set(out) == {"position", "energy"}  # no log-variance without gaussian_nll
    assert torch.equal(out["position"], model.heads["position"].mlp(tokens.flatten(1)))
    assert all(k.startswith(("encoder.", "heads.position.mlp.", "heads.energy.mlp.")) for k in model.state_dict())


@pytest.mark.parametrize("head", ["tokens", "maps"])
def test_an_untrained_pointfit_regressor_predicts_the_point_source_fit(events, head):
    torch.manual_seed(0)
    model = build_regressor(regressor_cfg(head=head, classical_input="pointfit")).eval()
    x, valid = inputs(model, events, n=8)
    with torch.no_grad():
        out = model(x, valid)
    photons = torch.where(valid[..., 0], model.normalizer.npho_inverse(x[..., 0]), 0.0).double()
    fit = fit_point_source(photons, valid[..., 0])  # to convergence, as the classical baseline
    expected = geo.xyz_to_uvw(fit.position.float())
    got = TASK_TARGETS["position"].decode(out["position"])
    assert (got - expected).abs().max() < 0.05, (got, expected)  # cm: ten steps are as good as converged
    assert (out["position" + LOG_VAR] != 0).any()  # only the correction starts at zero, not the sigma
    assert not any(k.startswith("heads.heatmap.") for k in model.state_dict())
    features = model.classical(x, valid)
    light = photons.sum(1) / torch.where(valid[..., 0], solid_angle_fraction(fit.position), 0.0).sum(1)
    torch.testing.assert_close(features[:, 4].double(), light.log() - LOG_PHOTONS_REF, rtol=0, atol=1e-3)


@pytest.mark.parametrize("head", ["tokens", "maps"])
def test_an_untrained_pointfit_time_regressor_predicts_the_classical_time(events, head):
    """The in-graph time start is the classical estimate's (the same code, from the normalized input)."""
    torch.manual_seed(0)
    cfg = validate({"model": {"size": "tiny", "tasks": ["position", "energy", "timing"], "head": head,
                              "classical_input": "pointfit_time"}}, RegressorConfig)
    model = build_regressor(cfg).eval()
    n = 16
    with torch.no_grad():
        out = model(*inputs(model, events, n=n))
    classical = classical_features(events["npho"][:n].astype(np.float64),
                                   events["relative_time"][:n].astype(np.float64))
    got = TASK_TARGETS["timing"].decode(out["timing"])[:, 0].numpy()
    assert np.isfinite(classical.time).all()
    fitted = TASK_TARGETS["position"].decode(out["position"]).numpy()
    same = np.abs(fitted - classical.uvw).max(1) < 0.05  # cm: where ten fit steps reached the converged fit
    assert same.sum() >= n - 2
    np.testing.assert_allclose(got[same], classical.time[same], rtol=0, atol=0.005)  # ns
    truth = events["timeTruth"][:n]
    assert np.abs(got - truth - np.median(got - truth)).max() < 0.5  # ns: the truth up to its offset


def test_key_positions_are_the_centres_of_the_stage2_footprints():
    rows, cols = np.meshgrid(np.arange(20.0), np.arange(12.0), indexing="ij")
    centres = stage2_centres(np.stack([rows, cols, np.zeros_like(rows)], -1)).reshape(9, 5, 3)
    # an interior stage-2 cell a covers stem cells 2a, 2a + 1, which cover inputs 2a - 1 .. 2a + 3
    np.testing.assert_allclose(centres[1:, 1:, 0], 2 * np.arange(1, 9)[:, None] + 1 + 0 * np.arange(1, 5))
    np.testing.assert_allclose(centres[1:, 1:, 1], 2 * np.arange(1, 5)[None, :] + 1 + 0 * np.arange(1, 9)[:, None])
    inner = key_positions(EncoderConfig())["inner"]  # (966, 3) cm, on the inner face (r = 64.97 cm)
    assert inner.shape == (46 * 21, 3)
    np.testing.assert_allclose(np.hypot(inner[:, 0].numpy(), inner[:, 1].numpy()), 64.97, atol=0.5)
    assert inner[:, 2].min() < -28 and inner[:, 2].max() > 28  # the face spans u of about +-33 cm


def test_the_log_variance_bound_is_smooth_and_the_identity_inside():
    raw = torch.linspace(-40, 40, 801, requires_grad=True)
    bounded = bounded_log_var(raw)
    assert bounded.min() >= LOG_VAR_RANGE[0] and bounded.max() <= LOG_VAR_RANGE[1]
    middle = (raw > -10) & (raw < 2)
    torch.testing.assert_close(bounded[middle], raw[middle], atol=0.02, rtol=0)
    bounded.sum().backward()
    assert (raw.grad > 0).all()


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_the_nll_learns_a_per_event_sigma_whose_pulls_have_unit_width(beta):
    """A linear toy whose noise is known and varies per event by a factor 20: trained pulls have width ~1."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6000, 2, generator=gen) * 2 - 1
    sigma = 0.05 * torch.exp(1.5 * (x[:, 1] + 1))  # 0.05 .. 1.0
    y = (2 * x[:, 0] - x[:, 1] + sigma * torch.randn(6000, generator=gen))[:, None]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.GELU(), torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    train, held = slice(0, 4000), slice(4000, None)
    for _ in range(300):
        out = net(x[train])
        loss = gaussian_nll(out[:, :1], bounded_log_var(out[:, 1:]), y[train], beta).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = net(x[held])
        predicted = torch.exp(0.5 * bounded_log_var(out[:, 1:]))
    pulls = pull_metrics("timing", out[:, :1].numpy(), y[held].numpy(), predicted.numpy())
    assert abs(pulls["timing_pull_width"] - 1) < 0.1 and abs(pulls["timing_pull_bias"]) < 0.1, pulls
    assert np.corrcoef(predicted[:, 0].numpy(), sigma[held].numpy())[0, 1] > 0.95
    for region in (x[held][:, 1] > 0.5, x[held][:, 1] < -0.5):  # a constant sigma would be wrong in both
        pull = ((out[:, 0] - y[held][:, 0]) / predicted[:, 0])[region].numpy()
        assert abs(np.percentile(pull, 84) - np.percentile(pull, 16) - 2) < 0.4


def test_an_mae_encoder_loads_into_a_maps_regressor_and_trains_end_to_end_with_the_nll(sim_data, tmp_path):
    mae_cfg = validate({"model": {"size": "tiny"}})
    torch.manual_seed(1)
    mae = build_mae(mae_cfg).state_dict()
    mae = {k: v + 0.25 if v.is_floating_point() else v for k, v in mae.items()}  # unlike any fresh encoder
    save_checkpoint({"kind": "mae", "model_state_dict": mae, "config": mae_cfg.model_dump(mode="json")},
                    tmp_path / "mae.pth")
    cfg = tiny_config(sim_data, tmp_path, schema=RegressorConfig,
                      model={"tasks": ["position", "energy"], "head": "maps", "classical_input": "centroid"},
                      data={"max_events": 64, "val_max_events": 32}, training={"epochs": 1, "lr": 1e-3, **NLL},
                      checkpoint={"run_name": "maps", "resume_from": str(tmp_path / "mae.pth")})
    spec = RunSpec(kind="regressor", build_model=build_regressor, objective=RegressionObjective(cfg), truth=True,
                   init_from=init_regressor(cfg), param_groups=encoder_lr_groups)
    trainer = build_trainer(cfg, spec, torch.device("cpu"), total_steps=2)
    for name, value in trainer.raw.encoder.state_dict().items():
        torch.testing.assert_close(value, mae[f"encoder.{name}"])
    run = finetune(cfg)
    ckpt = load_checkpoint(run / "regressor_checkpoint_last.pth")
    assert ckpt["step"] == 2 and any(k.startswith("heads.heatmap.") for k in ckpt["model_state_dict"])
    last = ckpt["history"][-1]
    for key in ("val/position_pull_width_u", "val/position_pull_width_w", "val/energy_pull_width",
                "val/position_res_u_cm", "val/loss_position"):
        assert np.isfinite(last[key]), (key, last)


@pytest.fixture(scope="module")
def maps_checkpoint(tmp_path_factory, events):
    """A maps + pointfit_time regressor with a sigma calibration in two bins of predicted energy, whose edge splits
    these events' predictions in halves, so that the exported graph is checked on both sides of it."""
    root = tmp_path_factory.mktemp("maps")
    cfg = regressor_cfg(head="maps", classical_input="pointfit_time")  # the fit and its time run inside the graph
    torch.manual_seed(0)
    model = build_regressor(cfg).eval()
    with torch.no_grad():
        energy = TASK_TARGETS["energy"].decode(model(*inputs(model, events, n=64))["energy"])
    middle = energy.flatten().sort().values[31:33]  # the edge between the two middle events, far from both
    calibration = {"scales": {"position": [[1.5, 0.7, 1.2], [0.8, 1.3, 1.0]], "energy": [[1.1], [0.6]]},
                   "energy_edges_gev": [float(middle.mean())]}
    save_checkpoint({"kind": "regressor", "model_state_dict": model.state_dict(), "sigma_calibration": calibration,
                     "config": cfg.model_dump(mode="json"), "epoch": 1}, root / "maps.pth")
    return root / "maps.pth"


def test_predict_writes_the_sigma_branches_and_validate_the_pulls(sim_data, maps_checkpoint, tmp_path):
    predict_regression(maps_checkpoint, sim_data["val"], tmp_path / "reco.root", chunk_events=40, batch_size=32)
    with uproot.open(tmp_path / "reco.root") as f:
        reco = f["tree"].arrays(library="np")
    with uproot.open(sim_data["val"]) as f:
        first = f["tree"].arrays(["npho", "relative_time"], library="np", entry_stop=8)
    model = load_trained(maps_checkpoint, ("regressor",), "a test").model
    with torch.no_grad():
        out = model(*model.normalizer(torch.from_numpy(first["npho"]), torch.from_numpy(first["relative_time"])))
    sigma = TASK_TARGETS["position"].decode_sigma(out["position" + LOG_VAR]).numpy()
    np.testing.assert_allclose(reco["uvwSigma"][:8], sigma, rtol=1e-4)
    np.testing.assert_array_equal(reco["wSigma"], reco["uvwSigma"][:, 2])
    np.testing.assert_allclose(reco["energySigmaMeV"], reco["energySigma"] * 1000, rtol=1e-6)
    assert (reco["energySigma"] > 0).all() and "timeSigma" not in reco
    report = validate_regressor(maps_checkpoint, sim_data["val"], tmp_path / "val", classical=False, plots=False)
    metrics = report["metrics"]["model"]
    assert {"position_pull_width_u", "position_pull_bias_v", "energy_pull_width"} <= set(metrics)
    inside = report["events"]["fiducial"]
    assert inside > 0 and np.isfinite(metrics["position_pull_width_w"])


def test_a_maps_regressor_exports_to_onnx_and_torchscript_with_parity(maps_checkpoint, events, tmp_path):
    graph = make_graph(load_trained(maps_checkpoint, ("regressor",), "a test"), "regressor")
    meta = export_model(maps_checkpoint, tmp_path / "maps.pt", "torchscript")
    assert "position_sigma" in meta["outputs"] and "energy_sigma" in meta["outputs"]
    loaded = torch.jit.load(str(tmp_path / "maps.pt"))
    npho, rel_time = torch.from_numpy(events["npho"][:5]), torch.from_numpy(events["relative_time"][:5])
    with torch.no_grad():
        ours, ref = loaded(npho, rel_time), graph(npho, rel_time)
    assert len(ref) == 4  # position, energy, then their sigmas
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    export_model(maps_checkpoint, tmp_path / "maps.onnx", "onnx")
    floors = {"position": 0.1, "energy": 1e-3, "position_sigma": 1e-3, "energy_sigma": 1e-5}
    worst = onnx_parity(tmp_path / "maps.onnx", graph, events["npho"], events["relative_time"], floors, batch_size=32)
    assert max(worst.values()) <= 1e-3, worst
