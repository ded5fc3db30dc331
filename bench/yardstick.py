"""The yardstick: every reconstruction method scored on exactly the same held-out events.

    python bench/yardstick.py [--quick] [--full] [--size tiny|base] [--device cpu|cuda]
                              [--detector realistic|ideal] [--mae CKPT] [--work DIR] [--set key=value ...]

Methods, each given the same labelled events at every label budget:

- ``classical``: the point-source fit, the coverage-corrected light and the path-corrected time
  of :mod:`xecmae.analysis.classical`, calibrated on the budget's labelled events
  (:mod:`xecmae.analysis.calibration`); deterministic, so one run per budget;
- ``scratch``: the regressor (``position``, ``energy``, ``timing``) from random weights;
- ``mae_finetune``: the regressor from the pre-trained MAE encoder, everything fine-tuned;
- ``mae_frozen``: the pre-trained encoder frozen, only the heads trained, on encoder outputs
  cached once per event set (:mod:`xecmae.train.frozen`; always the specification's token heads,
  whatever ``--set model.head`` says for the fine-tuned methods).

Every learned run makes the same fixed number of optimizer steps (:mod:`xecmae.train.budget`)
whatever the budget, is scored with its last weights (nothing is selected on held-out events),
and is repeated per seed (initialisation and event order); the labelled events of a budget are
the first ones of one labelled set (flat 15-60 MeV), the same for every method and seed. The MAE
is pre-trained once per work directory on the simulated stream (``sim://``, new events every
epoch) and reused, or taken from ``--mae``. Held-out sets: flat 15-60 MeV and the 52.8 MeV line
(signal), both after the fiducial cuts of :class:`xecmae.config.FiducialConfig` on the truth.
Figures per set: bias, 68% half width and RMS of u, v, w (cm), energy (relative) and time (ns),
the 68% quantile of the 3D distance; for the line also the energy for w > 2 cm (``line_w2``); for a
task trained with ``gaussian_nll`` its pulls as the model gives them (``*_pull_bias_*``, ``*_pull_width_*``,
uncalibrated: the runs keep no labels aside for ``xecmae calibrate``).

Sizes (labels = budgets, steps of ``batch`` events per learned run):

========= ========================== ===== ===== ====== ======== ============================
preset    budgets                    seeds steps batch held-out pre-training (events x epochs)
========= ========================== ===== ===== ====== ======== ============================
--quick   64, 256                    1     4     16     64 + 64  256 x 1 (a smoke test)
default   1,000, 4,000, 16,000       2     160   32     1,000 x2 8,192 x 2
--full    500 ... 50,000 (7 budgets) 3     2,000 128    5,000 x2 100,000 x 10 (for a GPU)
========= ========================== ===== ===== ====== ======== ============================

The default is sized for about 50 minutes on two idle CPU cores with the ``tiny`` model, from the
speeds this README quotes for such a machine (pre-training 39 events/s; ``pretrain_benefit.py``'s
fine-tuning, about 30 events/s; the point-source fit about 10 ms per event): 12 learned runs of
160 x 32 events, about 35 min; pre-training 7 min; the fit of 18,000 events 3 min; caching and
scoring 5 min. It has not been timed end to end; on a machine shared with other work (load 9-10
on 2 cores) fine-tuning ran at 1.9 events/s, so give ``--threads 1`` there and expect hours. With
so few steps the largest budgets are not seen in full (160 x 32 = 5,120 events; an epoch cut short
by the budget takes other 128-event pieces each time): the CPU default tests the machinery and
the small budgets, ``--full`` the physics.

Resumable: every finished (method, budget, seed) is saved as ``results/METHOD_bBUDGET_sSEED.json``
in the work directory and a rerun skips it; event sets, classical features, the MAE and the
cached encoder outputs are kept too. A work directory remembers its settings and refuses others.
``--seed S`` runs only seed S of the grid, so that one job per seed can share a work directory
(make its event sets and features with one job first); each job's summary covers the seeds
finished so far.
Prints a markdown table, writes ``yardstick.png`` (resolution against budget per method) and
prints one JSON object with every figure as the last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from xecmae.analysis.calibration import fit_calibration
from xecmae.analysis.classical import ClassicalFeatures
from xecmae.apps.classical import features_of
from xecmae.apps.events import EventSource
from xecmae.apps.regress import SIGMA, regress
from xecmae.apps.trained import load_trained
from xecmae.config import FiducialConfig, MAEConfig, RegressorConfig
from xecmae.configload import validate
from xecmae.errors import UserError
from xecmae.models.regressor import TASK_TARGETS, build_regressor
from xecmae.simulate import EventGenerator, write_root
from xecmae.train.architecture import adopt_architecture
from xecmae.train.budget import step_budget
from xecmae.train.checkpoint import load_checkpoint
from xecmae.train.finetune import finetune, init_regressor
from xecmae.train.frozen import encode_events, predict_heads, train_heads
from xecmae.train.pretrain import pretrain
from xecmae.train.resolution import pull_metrics, resolution_metrics

log = logging.getLogger("yardstick")
METHODS = ("classical", "scratch", "mae_finetune", "mae_frozen")
TASKS = ("position", "energy", "timing")
SPECTRUM = "flat:15:60"
WARMUP_SHARE = 0.05  # of the steps of a learned run
PIECE_EVENTS = 128  # file pieces shuffled every epoch: an epoch cut short by the step budget sees other events
W_DEEP = 2.0  # cm: the line's energy resolution is quoted for w > 2 cm
TRUTH = ("uvwTruth", "energyTruth", "timeTruth")
PLOTTED = (("flat_position_res_u_cm", "u [cm]"), ("flat_position_res_v_cm", "v [cm]"),
           ("flat_position_res_w_cm", "w [cm]"), ("line_w2_energy_res_rel", "energy, 52.8 MeV, w > 2 cm"))
TABLE = ("flat_position_res_u_cm", "flat_position_res_v_cm", "flat_position_res_w_cm", "flat_position_res_3d_cm",
         "flat_energy_res_rel", "line_w2_energy_res_rel", "flat_timing_res_ns")


@dataclass(frozen=True)
class Preset:
    budgets: tuple[int, ...]
    seeds: int
    steps: int
    batch: int
    held_out: int
    pretrain_events: int
    pretrain_epochs: int
    lr: float = 1e-3
    workers: int = 1  # DataLoader workers of every training run


PRESETS = {
    "quick": Preset((64, 256), 1, 4, 16, 64, 256, 1),
    "default": Preset((1000, 4000, 16000), 2, 160, 32, 1000, 8192, 2),
    "full": Preset((500, 1000, 2000, 5000, 10000, 20000, 50000), 3, 2000, 128, 5000, 100_000, 10),
}


# --- settings and the work directory ----------------------------------------------------------------------
def parse_sets(pairs: list[str]) -> dict[str, object]:
    """``["model.head=maps", "training.lr=3e-4"]`` -> dotted overrides, values read as YAML."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set wants key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_sets(raw: dict, sets: dict[str, object]) -> dict:
    for dotted, value in sets.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return raw


def claim_work(work: Path, settings: dict) -> None:
    """Remember the settings of a work directory; refuse a rerun with other ones."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in settings.keys() | old.keys() if settings.get(k) != old.get(k))
        if changed:
            raise UserError(f"{work} holds results made with other settings ({', '.join(changed)}); "
                            "use another --work directory")
    else:
        path.write_text(json.dumps(settings, indent=1))


# --- event sets ---------------------------------------------------------------------------------------
def simulate_sets(work: Path, detector: str, preset: Preset) -> dict[str, Path]:
    """The labelled sets (one per budget: the first events of one generator) and the two held-out sets."""
    data = work / "data"
    data.mkdir(exist_ok=True)
    plan = {f"labelled_{b}": (SPECTRUM, 202, b) for b in preset.budgets}
    plan |= {"flat": (SPECTRUM, 303, preset.held_out), "line": ("signal", 304, preset.held_out)}
    paths = {}
    for name, (spectrum, seed, events) in plan.items():
        path = data / f"{name}.root"
        if not path.exists():
            write_root(path, events, EventGenerator(spectrum, seed=seed, detector=detector), progress=False)
        paths[name] = path
    return paths


def classical_of(work: Path, name: str, path: Path) -> tuple[ClassicalFeatures, dict[str, np.ndarray]]:
    """Classical features and truth of one event set, computed once and cached."""
    cache = work / "features" / f"{name}.npz"
    truth_cache = cache.with_suffix(".truth.npz")
    if cache.exists() and truth_cache.exists():
        with np.load(truth_cache) as t:
            return ClassicalFeatures.load(cache), {k: t[k] for k in TRUTH}
    cache.parent.mkdir(exist_ok=True)
    feats, truth = features_of(EventSource(str(path)), 1024, RegressorConfig().normalizer(), TRUTH)
    feats.save(cache)
    np.savez(truth_cache, **truth)
    return feats, truth


# --- scoring -----------------------------------------------------------------------------------------
def score(pred: dict[str, np.ndarray], truth: dict[str, np.ndarray], prefix: str, cuts: FiducialConfig
          ) -> dict[str, float]:
    """Figures of one held-out set after the fiducial cuts; events without an estimate are counted, not scored."""
    uvw = truth["uvwTruth"].reshape(-1, 3)
    inside = (np.abs(uvw[:, 0]) < cuts.u_max) & (np.abs(uvw[:, 1]) < cuts.v_max) & (uvw[:, 2] >= cuts.w_min)
    out: dict[str, float] = {f"{prefix}_events": int(inside.sum())}
    selections = {prefix: inside}
    if prefix == "line":
        selections["line_w2"] = inside & (uvw[:, 2] > W_DEEP)
    for label, keep in selections.items():
        for task in TASKS:
            if task not in pred or (label == "line_w2" and task != "energy"):
                continue
            t = np.asarray(truth[TASK_TARGETS[task].branch], np.float64).reshape(len(uvw), -1)
            p = np.asarray(pred[task], np.float64).reshape(len(uvw), -1)
            ok = keep & np.isfinite(p).all(1)
            out[f"{label}_{task}_missing"] = int((keep & ~ok).sum())
            out |= {f"{label}_{k}": v for k, v in resolution_metrics(task, p[ok], t[ok]).items()}
            if task + SIGMA in pred and label != "line_w2":  # a Gaussian task: its pulls, as the model gives them
                sigma = np.asarray(pred[task + SIGMA], np.float64).reshape(len(uvw), -1)
                out |= {f"{label}_{k}": v for k, v in pull_metrics(task, p[ok], t[ok], sigma[ok]).items()}
    return out


def held_out_scores(predict, sets: dict[str, dict[str, np.ndarray]], cuts: FiducialConfig) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in ("flat", "line"):
        out |= score(predict(name), sets[name], name, cuts)
    return out


# --- the methods ----------------------------------------------------------------------------------------
def regressor_raw(args, preset: Preset, train: Path, run: str, seed: int, start: str | None, budget: int) -> dict:
    raw = {"data": {"train_path": str(train), "batch_size": preset.batch, "chunksize": PIECE_EVENTS,
                    "num_workers": preset.workers,
                    "shuffle_buffer": 4096},
           "model": {"size": args.size, "tasks": list(TASKS)},
           "training": {"lr": preset.lr, "seed": seed, "device": args.device, "log_interval": 10**6},
           "checkpoint": {"save_dir": str(args.work / "runs"), "run_name": run, "resume_from": start,
                          "save_predictions": False, "save_every_steps": 0, "overwrite": True},
           "mlflow": {"enabled": False}}
    apply_sets(raw, args.sets)
    return step_budget(raw, preset.steps, budget, None if "training.warmup_epochs" in args.sets else WARMUP_SHARE)


def run_regressor(args, preset, ctx, budget: int, seed: int, start: str | None, name: str) -> dict[str, float]:
    raw = regressor_raw(args, preset, ctx["paths"][f"labelled_{budget}"], f"{name}_b{budget}_s{seed}", seed, start,
                        budget)
    run = finetune(validate(raw, RegressorConfig))
    trained = load_trained(run / "regressor_checkpoint_last.pth", ("regressor",), "the yardstick", args.device)
    events = ctx["events"]
    return held_out_scores(lambda s: regress(trained.model, events[s]["npho"], events[s]["time"], 256,
                                             torch.device(args.device)), ctx["truth"], ctx["cuts"])


def frozen_model(args, preset, mae: str, seed: int):
    raw = regressor_raw(args, preset, Path("unused.root"), "frozen", seed, mae, preset.budgets[0])
    raw["model"] |= {"head": "tokens", "classical_input": "none"}  # the cache holds the six tokens only
    cfg = adopt_architecture(validate(raw, RegressorConfig))
    torch.manual_seed(seed)
    model = build_regressor(cfg)
    init_regressor(cfg)(model, load_checkpoint(mae), mae)
    model.set_encoder_frozen(True)
    return model.to(args.device), cfg


def cached_tokens(args, preset, ctx, name: str, path: Path) -> torch.Tensor:
    cache = args.work / "tokens" / f"{name}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    cache.parent.mkdir(exist_ok=True)
    model, _ = frozen_model(args, preset, ctx["mae"], 0)
    parts = [encode_events(model, c["npho"], c["time"], 256, args.device)
             for c in EventSource(str(path)).chunks(EventSource(str(path)).plan(), 1024)]
    tokens = torch.cat(parts)
    torch.save(tokens, cache)
    return tokens


def run_frozen(args, preset, ctx, budget: int, seed: int) -> dict[str, float]:
    largest = max(preset.budgets)
    tokens = cached_tokens(args, preset, ctx, f"labelled_{largest}", ctx["paths"][f"labelled_{largest}"])[:budget]
    _, truth = ctx["classical"][f"labelled_{largest}"]
    model, cfg = frozen_model(args, preset, ctx["mae"], seed)
    train_heads(model, tokens, {t: truth[TASK_TARGETS[t].branch][:budget] for t in model.tasks}, cfg,
                preset.steps, seed, args.device)
    held = {s: cached_tokens(args, preset, ctx, s, ctx["paths"][s]) for s in ("flat", "line")}
    return held_out_scores(lambda s: predict_heads(model, held[s], device=args.device), ctx["truth"], ctx["cuts"])


def run_classical(ctx, budget: int, largest: int) -> dict[str, float]:
    feats, truth = ctx["classical"][f"labelled_{largest}"]
    cal = fit_calibration(feats.subset(slice(0, budget)), *(truth[k][:budget] for k in TRUTH), f"labelled_{budget}")
    return held_out_scores(lambda s: cal.apply(ctx["classical"][s][0]), ctx["truth"], ctx["cuts"])


def mae_checkpoint(args, preset: Preset) -> str:
    """The given MAE checkpoint, or the one pre-trained in the work directory (trained on first use)."""
    if args.mae:
        return str(args.mae)
    last = args.work / "mae" / "mae_checkpoint_last.pth"
    if last.exists():
        return str(last)
    stream = f"sim://{SPECTRUM}?seed=101&events={preset.pretrain_events}&detector={args.detector}"
    raw = {"data": {"train_path": stream, "batch_size": max(preset.batch, 16), "num_workers": preset.workers,
                    "shuffle_buffer": 0},
           "model": {"size": args.size},
           "training": {"epochs": preset.pretrain_epochs, "lr": 2e-3, "warmup_epochs": 0.2, "seed": 7,
                        "device": args.device, "log_interval": 10**6},
           "checkpoint": {"save_dir": str(args.work), "run_name": "mae", "save_predictions": False,
                          "overwrite": True},
           "mlflow": {"enabled": False}}
    return str(pretrain(validate(raw, MAEConfig)) / "mae_checkpoint_last.pth")


# --- the benchmark ------------------------------------------------------------------------------------------
def read_events(path: Path) -> dict[str, np.ndarray]:
    source = EventSource(str(path))
    chunks = list(source.chunks(source.plan(), 4096))
    return {k: np.concatenate([c[k] for c in chunks]) for k in ("npho", "time")}


def run_benchmark(args, preset: Preset, methods: tuple[str, ...] = METHODS) -> dict:
    """Every (method, budget, seed) not yet in the work directory, then the summary of all of them."""
    started = time.perf_counter()
    settings = json.loads(json.dumps({"preset": asdict(preset), "size": args.size, "detector": args.detector,
                                      "sets": args.sets, "mae": str(args.mae) if args.mae else None}))
    claim_work(args.work, settings)
    results = args.work / "results"
    results.mkdir(exist_ok=True)
    ctx: dict = {"paths": simulate_sets(args.work, args.detector, preset), "cuts": FiducialConfig()}
    largest = max(preset.budgets)
    ctx["classical"] = {name: classical_of(args.work, name, path) for name, path in ctx["paths"].items()
                        if name in ("flat", "line", f"labelled_{largest}")}
    ctx["truth"] = {s: ctx["classical"][s][1] for s in ("flat", "line")}
    ctx["events"] = {s: read_events(ctx["paths"][s]) for s in ("flat", "line")}
    if {"mae_finetune", "mae_frozen"} & set(methods):
        ctx["mae"] = mae_checkpoint(args, preset)
    done = skipped = 0
    for budget in preset.budgets:
        for seed in [args.seed] if args.seed is not None else range(preset.seeds):
            for method in methods:
                if method == "classical" and seed > 0:
                    continue  # deterministic: the same labelled events give the same calibration
                path = results / f"{method}_b{budget}_s{seed}.json"
                if path.exists():
                    skipped += 1
                    continue
                t0 = time.perf_counter()
                if method == "classical":
                    figures = run_classical(ctx, budget, largest)
                elif method == "mae_frozen":
                    figures = run_frozen(args, preset, ctx, budget, seed)
                else:
                    figures = run_regressor(args, preset, ctx, budget, seed,
                                            ctx.get("mae") if method == "mae_finetune" else None, method)
                record = {"method": method, "budget": budget, "seed": seed, "seconds": time.perf_counter() - t0,
                          "figures": figures}
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(record))
                tmp.replace(path)
                done += 1
                log.info("%s budget %d seed %d: %.0f s", method, budget, seed, record["seconds"])
    summary = summarise(results, preset, methods)
    summary |= {"runs_done": done, "runs_skipped": skipped, "seconds": round(time.perf_counter() - started, 1),
                "settings": settings, "work": str(args.work)}
    return summary


def summarise(results: Path, preset: Preset, methods: tuple[str, ...]) -> dict:
    """Mean and spread (standard deviation over seeds) of every figure, per method and budget."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        for budget in preset.budgets:
            records = [json.loads(p.read_text()) for p in sorted(results.glob(f"{method}_b{budget}_s*.json"))]
            if not records:
                continue
            keys = records[0]["figures"].keys()
            entry: dict[str, float] = {"seeds": len(records)}
            for key in keys:
                values = np.array([r["figures"][key] for r in records], np.float64)
                entry[key] = float(values.mean())
                if not key.endswith(("_events", "_missing")):  # counts are the same for every seed
                    entry[f"{key}_spread"] = float(values.std()) if len(values) > 1 else 0.0
            table.setdefault(method, {})[str(budget)] = entry
    return {"budgets": list(preset.budgets), "steps": preset.steps, "batch": preset.batch, "results": table}


def markdown(summary: dict) -> str:
    head = "| method | labels | " + " | ".join(TABLE) + " |"
    lines = [head, "|" + "---|" * (len(TABLE) + 2)]
    for method, budgets in summary["results"].items():
        for budget, entry in budgets.items():
            cells = [f"{entry.get(k, float('nan')):.4g} ± {entry.get(k + '_spread', 0.0):.2g}" for k in TABLE]
            lines.append(f"| {method} | {budget} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4.2 * len(PLOTTED), 3.6))
    for ax, (key, label) in zip(axes, PLOTTED, strict=True):
        for method, budgets in summary["results"].items():
            x = [int(b) for b in budgets]
            y = [budgets[b].get(key, np.nan) for b in budgets]
            e = [budgets[b].get(f"{key}_spread", 0.0) for b in budgets]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("labelled events")
        ax.set_title(f"68% half width: {label}", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def chosen_preset(preset: Preset, args: argparse.Namespace) -> Preset:
    """The preset with the budgets, seeds, steps and batch given on the command line (they enter settings.json).

    A ``--set data.batch_size`` becomes the preset's batch, so it is also the batch of a pre-training
    made in the work directory (``max(batch, 16)``), as the preset's own batch always was."""
    given = {"budgets": tuple(args.budgets) if args.budgets else None, "seeds": args.seeds, "steps": args.steps,
             "batch": args.sets.get("data.batch_size")}  # so that the summary names the batch the runs used
    if any(v is not None and (min(v) if isinstance(v, tuple) else v) <= 0 for v in given.values()):
        raise UserError("--budgets, --seeds, --steps and data.batch_size must be positive")
    chosen = replace(preset, **{k: v for k, v in given.items() if v is not None})
    if args.seed is not None and not 0 <= args.seed < chosen.seeds:
        raise UserError(f"--seed {args.seed} is not one of the grid's seeds 0..{chosen.seeds - 1}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a few minutes: a smoke test, not a measurement")
    size.add_argument("--full", action="store_true", help="the grid for a GPU: 500 to 50,000 labels, 3 seeds")
    parser.add_argument("--size", choices=["tiny", "small", "base"], default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--detector", choices=["realistic", "ideal"], default="realistic")
    parser.add_argument("--mae", type=Path, default=None, help="a pre-trained MAE checkpoint (else pre-trained once "
                                                                "into the work directory and reused)")
    parser.add_argument("--work", type=Path, default=None,
                        help="work directory (default yardstick_output/PRESET_DETECTOR_SIZE)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="configuration override of the regressor runs, e.g. --set training.lr=3e-4")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--budgets", type=int, nargs="+", default=None, metavar="N",
                        help="label budgets instead of the preset's (e.g. --budgets 16000 for one point)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per budget instead of the preset's")
    parser.add_argument("--seed", type=int, default=None,
                        help="run only this seed of the grid (one job per seed sharing a work directory)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimiser steps per learned run instead of the preset's (a convergence check)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default torch's choice; 1 on a machine shared with other work)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = "quick" if args.quick else "full" if args.full else "default"
    args.work = args.work or Path("yardstick_output") / f"{name}_{args.detector}_{args.size}"
    try:
        args.sets = parse_sets(args.sets)
        summary = run_benchmark(args, chosen_preset(PRESETS[name], args), tuple(args.methods))
    except UserError as exc:
        print(f"yardstick: error: {exc}", file=sys.stderr)
        return 2
    summary["plot"] = str(plot(summary, args.work / "yardstick.png"))
    print(markdown(summary))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from xecmae.runtime import restart_with_huge_pages

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    restart_with_huge_pages()  # as the xecmae commands do
    sys.exit(main())
