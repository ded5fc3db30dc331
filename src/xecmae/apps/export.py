"""``xecmae export``: an encoder, regressor or inpainter as one ONNX or TorchScript file.

The exported graph includes the normalisation (:mod:`xecmae.apps.graphs`): raw ``npho``
(photons) and ``relative_time`` (seconds) in, in the files' sensor order, physical units out;
the batch size is dynamic. The file carries what a C++ user needs as string metadata
(ONNX ``metadata_props``; the TorchScript archive's ``extra/xecmae.json``): model kind,
inputs and outputs with units, the normalisation, the sensor order, the checkpoint and the
software versions.

ONNX goes through ``torch.onnx.export`` with the dynamo exporter (needs ``onnxscript``),
opset 18; TorchScript through ``torch.jit.trace``. Either file is written under a temporary
name beside the output and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import xecmae
from xecmae.apps.graphs import INPUT_NAMES, INPUT_UNITS, make_graph, output_names
from xecmae.apps.predict import check_output
from xecmae.apps.trained import load_trained
from xecmae.data.atomic import atomic_path
from xecmae.detector.geometry import N_SENSORS
from xecmae.errors import UserError

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
PARTS = {"encoder": ("regressor", "mae", "inpainter"), "regressor": ("regressor",), "inpainter": ("inpainter", "mae")}
"""What can be exported, and from which checkpoint kinds."""
OPSET = 18
TRACE_EVENTS = 2  # events of the example input; the batch axis stays dynamic


def default_part(kind: str) -> str:
    return {"regressor": "regressor", "inpainter": "inpainter", "mae": "encoder"}[kind]


def example_inputs(events: int = TRACE_EVENTS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Plausible raw inputs for tracing: photons of a few hundred, times of tens of ns, a few dead channels."""
    gen = torch.Generator().manual_seed(seed)
    npho = torch.rand(events, N_SENSORS, generator=gen) * 500.0
    time = torch.rand(events, N_SENSORS, generator=gen) * 5e-8
    dead = torch.rand(events, N_SENSORS, generator=gen) < 0.01
    return torch.where(dead, 1e10, npho), torch.where(dead, 1e10, time)


def metadata(trained, graph: nn.Module) -> dict[str, str]:
    """String key-value pairs stored in the exported file."""
    norm = trained.normalizer
    return {"xecmae_kind": graph.kind, "xecmae_version": xecmae.__version__, "torch_version": torch.__version__,
            "inputs": json.dumps(INPUT_UNITS), "outputs": json.dumps(graph.output_units),
            "normalization": json.dumps(asdict(norm)),
            "normalization_in_graph": "true: feed raw npho (photons) and relative_time (seconds)",
            "sensor_order": f"index i of the {N_SENSORS} values is sensor id i, as in the input ROOT files",
            "dead_channel": "1e10 (or NaN, inf) in npho marks a dead sensor; npho below "
                            f"{norm.npho_threshold:g} photons makes its time invalid",
            "checkpoint": json.dumps(trained.describe()),
            "tasks": ",".join(getattr(trained.model, "tasks", ()))}


def _export_onnx(graph: nn.Module, path: Path, meta: dict[str, str]) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, example_inputs(), dynamo=True, opset_version=OPSET,
                                    input_names=list(INPUT_NAMES), output_names=list(output_names(graph)),
                                    dynamic_shapes={"npho": {0: batch}, "relative_time": {0: batch}},
                                    verbose=False)
    model = program.model_proto
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def _export_torchscript(graph: nn.Module, path: Path, meta: dict[str, str]) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, example_inputs(), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"xecmae.json": json.dumps(meta)})


def export_model(checkpoint: str | Path, output: str | Path, fmt: str = "onnx", part: str | None = None
                 ) -> dict[str, Any]:
    """Write ``output``; returns the metadata written. ``part`` defaults to the checkpoint's own kind."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if part is not None and part not in PARTS:
        raise UserError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
    output = Path(output)
    check_output(output, [])
    kinds = PARTS[part] if part else ("regressor", "mae", "inpainter")
    trained = load_trained(checkpoint, kinds, f"exporting {'the ' + part if part else 'a model'}")
    part = part or default_part(trained.kind)
    graph = make_graph(trained, part)
    meta = metadata(trained, graph)
    with torch.no_grad():
        graph(*example_inputs())  # fills the models' lazily built tables outside the tracer
    with atomic_path(output) as tmp:
        (_export_onnx if fmt == "onnx" else _export_torchscript)(graph, tmp, meta)
    log.info("%s: %s %s, outputs %s", output, part, fmt, ", ".join(output_names(graph)))
    return meta


def onnx_parity(path: str | Path, graph: nn.Module, npho: np.ndarray, time: np.ndarray,
                floor: float | dict[str, float], batch_size: int = 256) -> dict[str, float]:
    """Max relative difference per output between onnxruntime and PyTorch, over entries with |value| > floor
    (one floor, or one per output name); for a boolean output the fraction of entries that differ."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if isinstance(floor, dict):
        missing = set(floor) - set(names)
        if missing:
            raise ValueError(f"{path} has no output {sorted(missing)}; outputs: {names}")
    worst = dict.fromkeys(names, 0.0)
    for start in range(0, len(npho), batch_size):
        feed = {"npho": npho[start:start + batch_size], "relative_time": time[start:start + batch_size]}
        ours = session.run(None, feed)
        with torch.no_grad():
            ref = graph(*(torch.from_numpy(v) for v in feed.values()))
        ref = ref if isinstance(ref, tuple) else (ref,)
        for name, a, b in zip(names, ours, ref, strict=True):
            b = b.numpy()
            if a.dtype == bool:
                worst[name] = max(worst[name], float((a != b).mean()))
                continue
            big = np.abs(b) > (floor[name] if isinstance(floor, dict) else floor)
            if big.any():
                worst[name] = max(worst[name], float((np.abs(a - b)[big] / np.abs(b)[big]).max()))
    return worst
