"""``xecmae export``: a trained encoder, regressor or inpainter as one ONNX or TorchScript file.

The graph takes raw ``npho`` (photons) and ``relative_time`` (seconds), (batch, 4760) float32
in sensor-id order, and returns physical units; see :mod:`xecmae.apps.graphs`.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="regressor, inpainter or MAE checkpoint")
    parser.add_argument("--output", required=True, help="file to write (e.g. model.onnx, model.pt)")
    parser.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    parser.add_argument("--part", default=None,
                        help="encoder | regressor | inpainter (default: the checkpoint's own kind; "
                             "an MAE checkpoint exports its encoder)")


def run(args: argparse.Namespace) -> int:
    import json

    from xecmae.apps.export import export_model

    meta = export_model(args.checkpoint, args.output, args.format, args.part)
    outputs = ", ".join(f"{name} ({unit})" for name, unit in json.loads(meta["outputs"]).items())
    print(f"{args.output}: {meta['xecmae_kind']} ({args.format}); inputs npho (photons), relative_time (s), "
          f"(batch, 4760); outputs {outputs}")
    return 0
