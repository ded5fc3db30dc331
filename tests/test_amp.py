"""bf16 autocast: the trainer's mixed-precision code path, run on the CPU (``training.cpu_amp``).

On a GPU the trainer wraps every forward pass in bf16 autocast; the same dtype rules hold for
CPU autocast, so these tests run that path where no GPU is: forward, backward and optimizer
step of every kind of model, through the real :class:`~xecmae.train.loop.Trainer`.
"""

import math

import pytest
import torch

from xecmae.config import InpainterConfig, MAEConfig, RegressorConfig
from xecmae.configload import validate
from xecmae.models import build_mae
from xecmae.models.blocks import GRN, DepthwiseConv2d, grn_reference
from xecmae.models.regressor import build_regressor
from xecmae.simulate import EventGenerator
from xecmae.train.finetune import RegressionObjective
from xecmae.train.loop import Trainer
from xecmae.train.optim import make_optimizer, make_scheduler
from xecmae.train.pretrain import mae_objective

EVENTS = 4
LOSS_TOLERANCE = 0.01  # relative, bf16 against fp32 on the same batch and weights

KINDS = {
    "mae": (MAEConfig, {}, build_mae),
    "inpainter": (InpainterConfig, {}, build_mae),
    "regressor_unfrozen": (RegressorConfig, {"tasks": ["position", "energy"]}, build_regressor),
    "regressor_frozen": (RegressorConfig, {"tasks": ["position", "energy"], "freeze_encoder": True}, build_regressor),
    "regressor_pointfit_time": (RegressorConfig, {"tasks": ["position", "energy", "timing"], "head": "maps",
                                                  "classical_input": "pointfit_time"}, build_regressor),
}


def make_config(kind: str, amp: bool):
    schema, model, _ = KINDS[kind]
    return validate({"model": {"size": "tiny", **model},
                     "training": {"amp": amp, "cpu_amp": True, "seed": 3, "lr": 1e-3}}, schema)


def make_batch(cfg) -> dict[str, torch.Tensor]:
    raw = EventGenerator(seed=7).generate(EVENTS)
    x, valid = cfg.normalizer()(torch.from_numpy(raw["npho"]), torch.from_numpy(raw["relative_time"]))
    return {"x": x, "valid": valid} | {k: torch.from_numpy(raw[k]) for k in ("uvwTruth", "energyTruth", "timeTruth")}


def make_trainer(kind: str, amp: bool, grad_accum_steps: int = 1) -> Trainer:
    cfg = make_config(kind, amp)
    torch.manual_seed(0)
    model = KINDS[kind][2](cfg)
    if kind == "inpainter":  # refiners start at zero, which would make both precisions agree trivially
        for refiner in model.refiners.values():
            torch.nn.init.normal_(refiner.out.weight, std=0.01)
    objective = RegressionObjective(cfg) if kind.startswith("regressor") else mae_objective(cfg)
    optimizer = make_optimizer(model, cfg.training.lr, cfg.training.weight_decay)
    scheduler = make_scheduler(optimizer, "none", 10, 0, cfg.training.lr, cfg.training.lr_min)
    return Trainer(model, model, optimizer, scheduler, None, objective, seed=cfg.training.seed,
                   grad_accum_steps=grad_accum_steps, amp=cfg.training.amp, cpu_amp=cfg.training.cpu_amp)


def mean_loss(stats) -> float:
    numerator, denominator = stats["total_loss"]
    return float(numerator / denominator)


@pytest.mark.parametrize("kind", list(KINDS))
def test_bf16_step_of_every_model_matches_fp32(kind):
    batch = make_batch(make_config(kind, True))
    losses = {}
    for amp in (False, True):
        trainer = make_trainer(kind, amp, grad_accum_steps=2)  # the first batch leaves its gradients
        assert trainer.amp is amp
        before = [p.detach().clone() for p in trainer.params]
        stats = trainer.train_step(batch)
        losses[amp] = mean_loss(stats)
        grads = {n: p.grad for n, p in trainer.raw.named_parameters() if p.requires_grad}
        assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
        bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
        assert not bad, bad
        assert all(g.dtype == torch.float32 for g in grads.values())
        trainer.train_step(batch)  # the optimizer step
        assert trainer.state.step == 1
        assert int(trainer.bad_total) == 0
        after = list(trainer.params)
        assert all(torch.isfinite(p).all() for p in after)
        assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert math.isfinite(losses[True])
    assert abs(losses[True] - losses[False]) <= LOSS_TOLERANCE * abs(losses[False]), losses


def test_frozen_encoder_gets_no_gradient_under_bf16():
    trainer = make_trainer("regressor_frozen", True, grad_accum_steps=2)
    trainer.train_step(make_batch(make_config("regressor_frozen", True)))
    assert all(p.grad is None for p in trainer.raw.encoder.parameters())


def test_bf16_depthwise_backward_input_type_bfloat16_weight_float():
    """The crash 'Input type (BFloat16) and weight type (float)' at the first backward under autocast."""
    torch.manual_seed(0)
    conv = DepthwiseConv2d(8, kernel_size=7)
    reference = torch.nn.Conv2d(8, 8, 7, padding=3, groups=8)
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(2, 8, 9, 11, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        y_ref = reference(x_ref)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    assert x.grad.dtype == x_ref.grad.dtype == torch.float32
    assert conv.weight.grad.dtype == conv.bias.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(conv.weight.grad, reference.weight.grad, rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(conv.bias.grad, reference.bias.grad, rtol=2e-2, atol=2e-2)


def test_cpu_amp_is_off_by_default():
    cfg = validate({"model": {"size": "tiny"}})
    assert cfg.training.amp and not cfg.training.cpu_amp
    model = build_mae(cfg)
    optimizer = make_optimizer(model, 1e-3, 0.0)
    trainer = Trainer(model, model, optimizer, make_scheduler(optimizer, "none", 1, 0, 1e-3, 0.0), None,
                      mae_objective(cfg), seed=0, amp=cfg.training.amp, cpu_amp=cfg.training.cpu_amp)
    assert not trainer.amp  # the CPU keeps fp32 unless asked


def test_grn_under_bf16_writes_its_output_in_the_input_dtype():
    torch.manual_seed(0)
    grn = GRN(16, spatial_dims=(1, 2))
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    x = torch.randn(2, 5, 7, 16, requires_grad=True)
    x_bf16 = x.detach().bfloat16().requires_grad_(True)
    y = grn(x_bf16)
    assert y.dtype == torch.bfloat16  # the widest tensor of the block is not widened to fp32
    torch.testing.assert_close(y.float(), grn_reference(x_bf16.float(), grn.gamma, grn.beta, (1, 2)),
                               rtol=1e-2, atol=1e-2)
    y.float().square().sum().backward()
    assert x_bf16.grad.dtype == torch.bfloat16 and grn.gamma.grad.dtype == torch.float32
    assert torch.isfinite(x_bf16.grad).all() and torch.isfinite(grn.gamma.grad).all()
