"""The yardstick's machinery on a micro grid: every method scored on the same events, resumed without rework."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xecmae.config import FiducialConfig, RegressorConfig
from xecmae.configload import validate
from xecmae.data.plan import steps_per_epoch
from xecmae.errors import UserError
from xecmae.models import build_mae
from xecmae.train.budget import step_budget
from xecmae.train.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _yardstick():
    spec = importlib.util.spec_from_file_location("yardstick", REPO / "bench" / "yardstick.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["yardstick"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("events", "steps"), [(1000, 160), (16000, 160), (100, 7), (64, 3)])
def test_step_budget_gives_equal_epochs_that_end_at_the_budget(events, steps):
    raw = {"data": {"batch_size": 32, "num_workers": 1}}
    step_budget(raw, steps, events, warmup_share=0.05)
    cfg = validate(raw, RegressorConfig)
    per_epoch = steps_per_epoch(cfg.data.max_events or events, 32, 1, 1)
    scheduled = per_epoch * cfg.training.epochs
    assert cfg.training.max_steps == steps and steps <= scheduled < steps + cfg.training.epochs
    assert cfg.training.warmup_epochs * per_epoch == pytest.approx(0.05 * steps)
    with pytest.raises(UserError, match="make no batch"):
        step_budget({"data": {"batch_size": 32}}, steps, 20)


@pytest.fixture
def one_thread():
    """One torch thread: on a shared two-core machine two threads of a tiny model wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_yardstick_scores_every_method_and_a_rerun_skips_finished_runs(tmp_path, one_thread):
    ys = _yardstick()
    preset = ys.Preset(budgets=(32,), seeds=1, steps=1, batch=16, held_out=24, pretrain_events=32,
                       pretrain_epochs=1, workers=0)
    torch.manual_seed(0)
    mae_cfg = validate({"model": {"size": "tiny"}})  # an MAE checkpoint given, as --mae does: none is trained
    save_checkpoint({"kind": "mae", "model_state_dict": build_mae(mae_cfg).state_dict(),
                     "config": mae_cfg.model_dump(mode="json")}, tmp_path / "mae.pth")
    args = argparse.Namespace(size="tiny", device="cpu", detector="ideal", mae=tmp_path / "mae.pth",
                              work=tmp_path / "work", sets={"model.head_hidden": 32}, seed=None)
    first = ys.run_benchmark(args, preset)
    assert first["runs_done"] == 4 and first["runs_skipped"] == 0  # 4 methods x 1 budget x 1 seed
    results = first["results"]
    assert set(results) == set(ys.METHODS) and all(set(r) == {"32"} for r in results.values())
    for method, budgets in results.items():
        entry = budgets["32"]
        for key in ("flat_position_res_u_cm", "flat_energy_res_rel", "flat_timing_res_ns", "line_w2_energy_res_rel",
                    "line_position_res_3d_cm"):
            assert entry[key] > 0, (method, key)
        assert entry["flat_events"] == results["classical"]["32"]["flat_events"]  # the same held-out events
    # the classical estimate, calibrated on 32 ideal events, is far better than a regressor after one step
    assert results["classical"]["32"]["flat_position_res_u_cm"] < results["scratch"]["32"]["flat_position_res_u_cm"]
    saved = sorted(p.name for p in (args.work / "results").glob("*.json"))
    assert saved == sorted(f"{m}_b32_s0.json" for m in ys.METHODS)
    again = ys.run_benchmark(args, preset)
    assert again["runs_done"] == 0 and again["runs_skipped"] == 4 and again["results"] == results
    other = argparse.Namespace(**{**vars(args), "detector": "realistic"})
    with pytest.raises(UserError, match="other settings"):
        ys.run_benchmark(other, preset)
    # --seed 1 of a two-seed grid runs that seed only (the classical estimate has a single seed, 0)
    one = argparse.Namespace(**{**vars(args), "work": tmp_path / "seed1", "seed": 1})
    alone = ys.run_benchmark(one, ys.replace(preset, seeds=2), ("classical", "scratch"))
    assert alone["runs_done"] == 1 and [p.name for p in (one.work / "results").iterdir()] == ["scratch_b32_s1.json"]
    table = ys.markdown(first)
    assert table.count("\n") == 2 + 4 - 1 and "| classical | 32 |" in table
    assert json.loads(json.dumps(first)) == first  # the last line is plain JSON


def test_budgets_seeds_steps_and_batch_from_the_command_line_replace_the_presets():
    ys = _yardstick()
    preset = ys.PRESETS["default"]
    args = argparse.Namespace(budgets=[16000], seeds=1, steps=1500, sets={}, seed=None)
    chosen = ys.chosen_preset(preset, args)
    assert (chosen.budgets, chosen.seeds, chosen.steps) == ((16000,), 1, 1500)
    assert (chosen.batch, chosen.held_out) == (preset.batch, preset.held_out)
    plain = argparse.Namespace(budgets=None, seeds=None, steps=None, sets={}, seed=None)
    assert ys.chosen_preset(preset, plain) == preset
    batch = ys.chosen_preset(preset, argparse.Namespace(budgets=None, seeds=None, steps=None,
                                                       sets={"data.batch_size": 128}, seed=None))
    assert batch == ys.replace(preset, batch=128)  # the summary then names the batch the runs used
    with pytest.raises(UserError, match="positive"):
        ys.chosen_preset(preset, argparse.Namespace(budgets=[0], seeds=None, steps=None, sets={}, seed=None))
    with pytest.raises(UserError, match=r"not one of the grid's seeds 0\.\.1"):
        ys.chosen_preset(preset, argparse.Namespace(budgets=None, seeds=2, steps=None, sets={}, seed=2))


def test_a_gaussian_task_is_scored_with_its_pulls_on_the_fiducial_events():
    rng = np.random.default_rng(2)
    n = 4000
    uvw = np.column_stack([rng.uniform(-30, 30, n), rng.uniform(-70, 70, n), rng.uniform(-1, 30, n)])
    truth = {"uvwTruth": uvw, "energyTruth": rng.uniform(0.015, 0.06, n)}
    sigma = np.full((n, 3), 0.5)
    pred = {"position": uvw + rng.normal(0, 1, (n, 3)) * np.array([0.5, 1.0, 0.25]), "position_sigma": sigma,
            "energy": truth["energyTruth"][:, None]}
    out = _yardstick().score(pred, truth, "line", FiducialConfig())
    assert out["line_position_pull_width_u"] == pytest.approx(1.0, abs=0.06)
    assert out["line_position_pull_width_v"] == pytest.approx(2.0, abs=0.12)
    assert out["line_position_pull_width_w"] == pytest.approx(0.5, abs=0.03)
    assert "line_energy_pull_width" not in out and "line_w2_position_pull_width_u" not in out  # no sigma, no pull
