"""Write ``old_layout.json.gz``: the layout of the checkpoints a version of xecmae writes, and its outputs.

Run it with the version whose checkpoints must keep loading on the source path, e.g.::

    git worktree add /tmp/old <commit> && PYTHONPATH=/tmp/old/src python tests/data/make_old_layout.py <commit>

It trains a tiny MAE (with EMA), inpainter and regressor for one step each on a few simulated events,
keeps each ``*_checkpoint_last.pth`` as a skeleton (:mod:`old_layout`: every key, shape and
setting, no numbers), and records what that version's model gives on a fixed input when the
skeleton is filled with the deterministic weights of :func:`old_layout.rebuild`.
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from old_layout import probe_outputs, rebuild, skeleton
from xecmae.apps.trained import load_trained
from xecmae.config import InpainterConfig, MAEConfig, RegressorConfig, validate
from xecmae.simulate import EventGenerator, write_root
from xecmae.train.finetune import finetune
from xecmae.train.inpaint import inpaint
from xecmae.train.pretrain import pretrain

OUT = Path(__file__).with_name("old_layout.json.gz")
KINDS = {  # kind: (schema, model keys, training keys, the run's entry point, checkpoint file)
    "mae": (MAEConfig, {}, {"ema_decay": 0.9}, pretrain, "mae_checkpoint_last.pth"),
    "inpainter": (InpainterConfig, {"prior": "solid_angle", "prior_fit_iterations": 1}, {}, inpaint,
                  "inpainter_checkpoint_last.pth"),
    "regressor": (RegressorConfig, {"tasks": ["position", "energy"]}, {}, finetune, "regressor_checkpoint_last.pth"),
}


def main(written_by: str) -> None:
    torch.set_num_threads(1)
    out = {"written_by": written_by}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_root(root / "train.root", 32, EventGenerator(seed=1, detector="ideal"), progress=False)
        for kind, (schema, model, training, run, name) in KINDS.items():
            cfg = validate({
                "data": {"train_path": str(root / "train.root"), "val_path": str(root / "train.root"),
                         "batch_size": 16, "chunksize": 32, "num_workers": 0, "shuffle_buffer": 32},
                "model": {"size": "tiny", **model},
                "training": {"epochs": 2, "max_steps": 1, "warmup_epochs": 0, "seed": 3, **training},
                "checkpoint": {"save_dir": str(root), "run_name": kind, "save_predictions": False,
                               "save_every_steps": 0},
                "mlflow": {"enabled": False},
            }, schema)
            run_dir = run(cfg)
            skel = skeleton(torch.load(run_dir / name, weights_only=True))
            rebuilt = root / f"{kind}_rebuilt.pth"
            torch.save(rebuild(skel), rebuilt)
            trained = load_trained(rebuilt, (kind,), "recording the layout")
            out[kind] = {"file": name, "skeleton": skel, "outputs": probe_outputs(kind, trained.model)}
    OUT.write_bytes(gzip.compress(json.dumps(out, separators=(",", ":")).encode(), mtime=0))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "unknown")
