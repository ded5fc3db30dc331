"""Checkpoints written before the models took their specs whole (commit b203844) still load, predict and resume.

Which it is: an old checkpoint *converted* to its layout. ``tests/data/old_layout.json.gz``
(25 kB, written by ``tests/data/make_old_layout.py`` run on b203844) holds the layout of the
``*_checkpoint_last.pth`` that b203844 wrote for a tiny MAE (with EMA), a tiny inpainter
(solid-angle prior) and a tiny regressor after one optimizer step: every payload key, every
state-dict name and shape (model, EMA, optimizer), the scheduler's state and the stored
configuration, with the numbers left out; and what b203844's models output on a fixed input
once that layout is filled with the deterministic weights of :func:`old_layout.rebuild`. The
test fills it the same way, writes the checkpoint, and checks that today's code rebuilds each
model from the stored configuration, loads every tensor, gives the same outputs, passes the
resume check, and (MAE, regressor) continues the run from it for one more step.
"""

import gzip
import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from old_layout import probe_outputs, rebuild
from xecmae.apps.trained import load_trained
from xecmae.config import ConfigError, InpainterConfig, MAEConfig, RegressorConfig
from xecmae.train.checkpoint import load_checkpoint
from xecmae.train.finetune import finetune
from xecmae.train.initialize import check_resumable
from xecmae.train.inpaint import inpaint
from xecmae.train.pretrain import pretrain

LAYOUT = json.loads(gzip.decompress((Path(__file__).parent / "data" / "old_layout.json.gz").read_bytes()))
RUNS = {  # kind: (schema, the run's entry point, the model and training keys the old run was made with)
    "mae": (MAEConfig, pretrain, {}, {"ema_decay": 0.9}),
    "inpainter": (InpainterConfig, inpaint, {"prior": "solid_angle", "prior_fit_iterations": 1}, {}),
    "regressor": (RegressorConfig, finetune, {"tasks": ["position", "energy"]}, {}),
}


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory):
    """kind -> the old run's last checkpoint, rebuilt from its layout with deterministic weights."""
    root = tmp_path_factory.mktemp("old")
    paths = {}
    for kind in RUNS:
        paths[kind] = root / kind / LAYOUT[kind]["file"]
        paths[kind].parent.mkdir()
        torch.save(rebuild(LAYOUT[kind]["skeleton"]), paths[kind])
    return paths


def test_the_layout_is_the_old_one():
    assert LAYOUT["written_by"] == "b203844"
    mae = LAYOUT["mae"]["skeleton"]
    assert {"model_state_dict", "ema_state_dict", "optimizer_state_dict", "scheduler_state_dict", "config",
            "rng_state", "step"} <= set(mae)
    assert mae["step"] == 1 and mae["config"]["model"]["encoder_dim"] == 128
    assert "encoder.face_embedding" in mae["model_state_dict"]  # a real layout, not an empty one


@pytest.mark.parametrize("kind", list(RUNS))
def test_an_old_checkpoint_loads_and_predicts_as_it_did(kind, old_checkpoint):
    trained = load_trained(old_checkpoint[kind], (kind,), "testing")
    assert trained.ema == (kind == "mae") and trained.step == 1
    saved = LAYOUT[kind]["skeleton"]["model_state_dict"]
    assert list(trained.model.state_dict()) == list(saved)  # every name, in the old order
    got, expected = probe_outputs(kind, trained.model), LAYOUT[kind]["outputs"]
    assert got.keys() == expected.keys()
    for key, values in expected.items():
        old = torch.tensor(values, dtype=torch.float64)
        assert old.abs().max() > 0, key  # the probe sees something
        torch.testing.assert_close(torch.tensor(got[key], dtype=torch.float64), old, rtol=1e-4,
                                   atol=1e-5 * float(old.abs().max()), msg=key)


@pytest.mark.parametrize("kind", ["mae", "regressor"])  # the inpainter's run is the MAE's (its keys: below)
def test_an_old_run_resumes(kind, old_checkpoint, sim_data, tmp_path):
    schema, run, model, training = RUNS[kind]
    cfg = tiny_config(sim_data, tmp_path, schema, model=model, training={"max_steps": 2, **training},
                      data={"batch_size": 16, "max_events": 32, "val_max_events": 16},  # as the old run
                      checkpoint={"run_name": "resumed", "resume_from": str(old_checkpoint[kind])})
    resumed = load_checkpoint(run(cfg) / LAYOUT[kind]["file"])
    assert resumed["kind"] == LAYOUT[kind]["skeleton"]["kind"]
    assert resumed["step"] == 2  # one more step after the old run's one: continued, not restarted
    assert list(resumed["model_state_dict"]) == list(LAYOUT[kind]["skeleton"]["model_state_dict"])


@pytest.mark.parametrize("kind", list(RUNS))
def test_an_old_configuration_passes_the_resume_check(kind, sim_data, tmp_path):
    """The keys a resumed run must share, now derived from the specs, accept the old run's own settings
    and still refuse another model."""
    schema, _, model, training = RUNS[kind]
    saved = LAYOUT[kind]["skeleton"]["config"]
    check_resumable(saved, tiny_config(sim_data, tmp_path, schema, model=model, training=training), "old.pth")
    other = tiny_config(sim_data, tmp_path, schema, model={**model, "encoder_dim": 64, "num_heads": 2})
    with pytest.raises(ConfigError, match=r"model\.encoder_dim: checkpoint 128, configuration 64"):
        check_resumable(saved, other, "old.pth")
