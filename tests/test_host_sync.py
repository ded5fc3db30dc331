"""A training step reads nothing back from the device and copies no per-step constant to it.

A GPU cannot be checked here, so these tests forbid the operations that would be a host-device
synchronisation or a host-to-device copy on a GPU (``item``, ``tolist``, ``bool`` of a tensor,
tensors made from Python data, and the linear algebra whose error check reads a flag back:
``torch.linalg.solve``, ``inv``, ``cholesky``) while the real trainer takes steps on the CPU.
"""

import contextlib

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from test_amp import KINDS, make_batch, make_config, make_trainer
from xecmae.models.regressor import TASK_TARGETS
from xecmae.train.ema import EMA


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def no_host_traffic():
    """Every tensor <-> Python conversion raises inside the block."""
    def forbid(name):
        def raising(*args, **kwargs):
            raise HostSync(f"{name} inside a training step")
        return raising

    patches = [(torch.Tensor, "item"), (torch.Tensor, "tolist"), (torch.Tensor, "__bool__"),
               (torch.Tensor, "new_tensor"), (torch, "tensor"), (torch, "as_tensor"),
               (torch.linalg, "solve"), (torch.linalg, "inv"), (torch.linalg, "cholesky")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in patches]
    try:
        for owner, name in patches:
            setattr(owner, name, forbid(name))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@pytest.mark.parametrize("kind", ["mae", "regressor_unfrozen", "regressor_pointfit_time"])
@pytest.mark.parametrize("ema", [False, True])
def test_training_steps_make_no_host_round_trip(kind, ema):
    trainer = make_trainer(kind, amp=False)
    if ema:
        trainer.ema = EMA(trainer.raw, 0.9)
    batch = make_batch(make_config(kind, False))
    trainer.train_step(batch)  # the first step creates the optimizer's state
    with no_host_traffic():
        for _ in range(2):
            trainer.train_step(batch)
    assert trainer.state.step == 3
    with pytest.raises(HostSync), no_host_traffic():  # the guard itself works
        torch.ones(2).sum().item()


def test_ema_matches_torchs_averaged_model_and_counts_on_the_models_device():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    ema = EMA(model, 0.8)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=False)
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        reference.update_parameters(model)
    for mine, theirs in zip(ema.module.parameters(), reference.module.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert ema.n_averaged == int(reference.n_averaged) == 4
    assert ema.averaged.n_averaged.device == next(model.parameters()).device
    assert int(ema.averaged.n_averaged) == 4
    ema.load_state_dict(model.state_dict(), n_averaged=9)
    assert ema.n_averaged == int(ema.averaged.n_averaged) == 9


@pytest.mark.parametrize("task", list(TASK_TARGETS))
def test_task_targets_encode_and_decode_as_the_formula_says(task):
    spec = TASK_TARGETS[task]
    truth = torch.randn(5, spec.size) * 30
    offset, scale = torch.tensor(spec.offset), torch.tensor(spec.scale)
    assert torch.equal(spec.encode(truth), (truth - offset) / scale)
    assert torch.equal(spec.decode(spec.encode(truth)), spec.encode(truth) * scale + offset)


def test_every_model_kind_is_covered_by_the_amp_tests():
    assert {"mae", "inpainter", "regressor_unfrozen", "regressor_frozen"} <= set(KINDS)
