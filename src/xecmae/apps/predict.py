"""``xecmae predict`` for a regressor: one entry per event with every predicted quantity in physical units.

The output is a ROOT file with

- a TTree ``tree``: ``run`` and ``event`` (int64, from the input; without them run -1 and the
  entry number), the prediction branches of :data:`xecmae.apps.regress.OUTPUT_BRANCHES`
  (``uvwPred``/``uPred``/``vPred``/``wPred``/``xyzPred`` cm, ``energyPred`` GeV and
  ``energyPredMeV`` MeV, ``timePred`` ns, ``emiAngPred``/``thetaPred``/``phiPred`` deg, for the
  tasks the model has), the per-event sigma of every task trained with the Gaussian NLL
  (:data:`xecmae.apps.regress.SIGMA_BRANCHES`: ``uvwSigma``/``uSigma``/``vSigma``/``wSigma`` cm,
  ``energySigma`` GeV and ``energySigmaMeV``, ``timeSigma`` ns, ``emiAngSigma``/``thetaSigma``/
  ``phiSigma`` deg; no sigma branch for a model trained without it), and a copy of every truth
  branch all inputs have (``energyTruth``, ``uvwTruth``, ...).
- a one-entry TTree ``metadata``: the checkpoint, model kind, weights (EMA or raw), tasks,
  normalisation, the input branch names, the units of every output branch and the software
  versions.

Events stream through in chunks; the file is written under a temporary name beside the output
and renamed when complete, so a failure never leaves half a file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import xecmae
from xecmae.apps.events import EventSource, common_truth
from xecmae.apps.regress import output_units, prediction_branches, regressed_chunks
from xecmae.apps.trained import Trained, check_run_options, load_trained
from xecmae.data.rootio import TreeWriter
from xecmae.data.spec import CHUNK_EVENTS
from xecmae.errors import UserError
from xecmae.train.rundir import check_writable, clean_stale_partials

log = logging.getLogger(__name__)

TREE = "tree"
METADATA = "metadata"


def check_output(output: Path, inputs: Sequence[str]) -> None:
    """The output's folder exists and is writable, and the output is none of the inputs; removes
    the partial files of earlier writers of ``output`` that were killed."""
    folder = output.parent
    if output.is_dir():
        raise UserError(f"cannot write {output}: it is a directory; give a file name, e.g. {output / 'out.root'}")
    if not folder.is_dir():
        raise UserError(f"cannot write {output}: directory {folder} does not exist")
    check_writable(folder, "--output")
    if any(Path(p).resolve() == output.resolve() for p in inputs):
        raise UserError("the output must not overwrite an input")
    clean_stale_partials(folder, output.name)


def metadata(trained: Trained, source: EventSource, files: Sequence[str], events: int) -> dict[str, str | float]:
    """The one entry of the ``metadata`` tree: strings and numbers a ROOT user can read."""
    norm = trained.normalizer
    units = output_units(trained.model)
    return {**trained.describe(), "tasks": ",".join(trained.model.tasks),
            "normalization": json.dumps(asdict(norm)), "npho_threshold": float(norm.npho_threshold),
            "channels": f"{source.npho_branch} (photons),{source.time_branch} (s)",
            "input_tree": source.tree, "inputs": ",".join(files), "events": float(events),
            "units": json.dumps(units), "xecmae_version": xecmae.__version__, "torch_version": torch.__version__}


def predict_regression(checkpoint: str | Path, inputs: str | Sequence[str], output: str | Path, *,
                       source: EventSource | None = None, chunk_events: int = CHUNK_EVENTS, batch_size: int = 256,
                       device: str = "cpu") -> dict[str, int]:
    """Write ``output`` with the regressor's predictions for every event of ``inputs``; returns counts."""
    source = source or EventSource(inputs)
    output = Path(output)
    planned = source.plan()
    check_run_options(chunk_events, batch_size, device)
    check_output(output, [p.path for p in planned])
    trained = load_trained(checkpoint, ("regressor",), "writing regression predictions", device)
    copied = common_truth(planned)
    total = sum(p.entries for p in planned)
    counts = {"events": 0, "files": len(planned)}
    dev = torch.device(device)

    def rows() -> Iterator[dict[str, np.ndarray]]:
        started = time.perf_counter()
        with tqdm(total=total, desc="predicting", unit="ev", disable=None) as bar:
            for chunk, pred in regressed_chunks(trained.model, source.chunks(planned, chunk_events), batch_size,
                                                dev):
                n = len(chunk["npho"])
                counts["events"] += n
                bar.update(n)
                bar.set_postfix_str(f"{counts['events'] / max(time.perf_counter() - started, 1e-9):.0f} ev/s")
                yield {"run": chunk["run"], "event": chunk["event"], **prediction_branches(pred),
                       **{name: chunk[name] for name in copied}}

    with TreeWriter(output, TREE) as out:
        for arrays in rows():
            out.extend(arrays)
        out.write_metadata(metadata(trained, source, [p.path for p in planned], counts["events"]), METADATA)
    log.info("%s: %d events from %d file(s)", output, counts["events"], counts["files"])
    return counts
