"""The contract every model kind answers, checked once over all of them at the ``tiny`` size.

Forward on real simulated events, the kind's own training loss, backward: every trainable
parameter gets a finite gradient, no output is NaN, and a plain-data checkpoint round trip
(``torch.save`` of the state dict, loaded with ``weights_only=True`` into a fresh model) gives
the same outputs bit for bit.
"""

from contextlib import nullcontext

import pytest
import torch

from xecmae.config import InpainterConfig, MAEConfig, RegressorConfig
from xecmae.configload import validate
from xecmae.models import build_mae
from xecmae.models.regressor import build_regressor
from xecmae.simulate import EventGenerator
from xecmae.train.finetune import RegressionObjective
from xecmae.train.pretrain import mae_objective

TASKS = ["position", "energy", "timing"]
NLL = {"task_loss_fn": {"position": "gaussian_nll", "energy": "gaussian_nll"}}
KINDS = {
    "mae": (MAEConfig, {}, {}),
    "mae_split_outer": (MAEConfig, {"outer_mode": "split"}, {}),
    "inpainter": (InpainterConfig, {}, {}),
    "regressor_tokens": (RegressorConfig, {"tasks": TASKS}, {}),
    "regressor_tokens_frozen": (RegressorConfig, {"tasks": TASKS, "freeze_encoder": True}, {}),
    "regressor_maps": (RegressorConfig, {"tasks": TASKS, "head": "maps"}, {}),
    "regressor_maps_centroid_nll": (RegressorConfig, {"tasks": TASKS, "head": "maps", "classical_input": "centroid"},
                                    NLL),
    "regressor_tokens_pointfit": (RegressorConfig, {"tasks": TASKS, "classical_input": "pointfit"}, {}),
}


@pytest.fixture(scope="module")
def raw_events():
    return EventGenerator(seed=5, dead_fraction=0.02).generate(4)


def build(kind: str):
    schema, model, training = KINDS[kind]
    cfg = validate({"model": {"size": "tiny", **model}, "training": {"seed": 3, **training}}, schema)
    torch.manual_seed(0)
    regressor = schema is RegressorConfig
    net = (build_regressor if regressor else build_mae)(cfg)
    if kind == "inpainter":  # the refiners start at zero; give them something to pass gradients through
        for refiner in net.refiners.values():
            torch.nn.init.normal_(refiner.out.weight, std=0.01)
    objective = RegressionObjective(cfg) if regressor else mae_objective(cfg)
    return cfg, net, objective


def batch_of(cfg, raw) -> dict[str, torch.Tensor]:
    x, valid = cfg.normalizer()(torch.from_numpy(raw["npho"]), torch.from_numpy(raw["relative_time"]))
    return {"x": x, "valid": valid} | {k: torch.from_numpy(raw[k]) for k in ("uvwTruth", "energyTruth", "timeTruth")}


def outputs(net, batch) -> list[torch.Tensor]:
    """Every tensor a forward pass returns, in a fixed order (a fixed seed for the MAE's mask)."""
    torch.manual_seed(11)
    out = net(batch["x"], batch["valid"])
    if isinstance(out, dict):
        return [out[k] for k in sorted(out)]
    return [out.pred, out.hidden] + [out.faces[k] for k in sorted(out.faces)]  # the MAE's MAEOutput


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_model_kind_trains_and_round_trips(kind, raw_events, tmp_path):
    cfg, net, objective = build(kind)
    batch = batch_of(cfg, raw_events)
    net.train()
    generator = torch.Generator().manual_seed(1)
    loss, _, _ = objective(net, net, batch, generator, nullcontext, True)
    assert torch.isfinite(loss), loss
    loss.backward()
    trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
    assert trainable
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, missing
    bad = [n for n, p in trainable.items() if not torch.isfinite(p.grad).all()]
    assert not bad, bad

    net.eval()
    with torch.no_grad():
        before = outputs(net, batch)
    assert before and all(not torch.isnan(t).any() for t in before if t.is_floating_point())
    torch.save(net.state_dict(), tmp_path / "weights.pth")
    _, fresh, _ = build(kind)
    fresh.load_state_dict(torch.load(tmp_path / "weights.pth", weights_only=True))
    fresh.eval()
    with torch.no_grad():
        after = outputs(fresh, batch)
    assert len(after) == len(before)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)

