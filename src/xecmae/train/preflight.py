"""Checks that refuse a mistake before it costs compute: every input file, every output place.

Training used to find a wrong-length or truncated validation file only after a whole epoch;
here every train and validation file is opened and its tree, branches and shapes checked
(:func:`xecmae.data.rootio.scan`, cached, reads no event data) before the first step.
"""

from __future__ import annotations

from pathlib import Path

from xecmae.config import RunConfig
from xecmae.train.rundir import check_writable


def check_data(cfg: RunConfig, truth: bool) -> None:
    """Scan every input file of both splits (tree, branches, per-event shapes, entries); one line if bad."""
    from xecmae.data.rootio import DataError, expected_shapes, scan
    from xecmae.data.sources import is_sim, resolve_inputs

    expected = expected_shapes(cfg.data.npho_branch, cfg.data.time_branch, truth)
    for split in ("train", "val"):
        source = getattr(cfg.data, f"{split}_path")
        if source in (None, "", []) or is_sim(source):
            continue
        files = resolve_inputs(source)
        if not any(scan(path, cfg.data.tree_name, expected).entries for path in files):
            raise DataError(f"data.{split}_path: no events: all {len(files)} input file(s) have empty trees")


def check_outputs(cfg: RunConfig) -> None:
    """A legacy ``save_path`` file must be writable before training starts (the run directory is
    checked when it is claimed)."""
    save_path = cfg.checkpoint.save_path
    if save_path and save_path.endswith(".pth"):
        path = Path(save_path)
        if path.is_dir():
            from xecmae.errors import UserError

            raise UserError(f"checkpoint.save_path: {path} is a directory, not a .pth file")
        check_writable(path.parent, "checkpoint.save_path")
