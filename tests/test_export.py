"""Exported models: the inpainter in onnxruntime fills like PyTorch; TorchScript carries its metadata."""

import json
import zipfile

import numpy as np
import pytest
import torch

from xecmae.apps.export import export_model, onnx_parity
from xecmae.apps.graphs import make_graph
from xecmae.apps.trained import load_trained
from xecmae.config import InpainterConfig, RegressorConfig
from xecmae.configload import validate
from xecmae.models import build_mae
from xecmae.models.regressor import build_regressor
from xecmae.simulate import EventGenerator
from xecmae.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def events():
    return EventGenerator(seed=21, dead_fraction=0.02).generate(200)


def test_the_inpainter_in_onnxruntime_fills_dead_channels_like_pytorch(tmp_path, events):
    import onnx  # installed by `make test` (the export extra)
    cfg = validate({"model": {"size": "tiny"}}, InpainterConfig)  # refine: the neighbour average inside the graph
    torch.manual_seed(0)
    save_checkpoint({"kind": "inpainter", "model_state_dict": build_mae(cfg).state_dict(),
                     "config": cfg.model_dump(mode="json")}, tmp_path / "inp.pth")
    meta = export_model(tmp_path / "inp.pth", tmp_path / "inp.onnx", "onnx")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "inp.onnx"), load_external_data=False).metadata_props}
    assert props == meta and json.loads(props["normalization"])["npho_threshold"] == 100.0
    graph = make_graph(load_trained(tmp_path / "inp.pth", ("inpainter",), "a test"), "inpainter")
    floors = {"npho_filled": 1.0, "relative_time_filled": 1e-10}  # photons, seconds
    worst = onnx_parity(tmp_path / "inp.onnx", graph, events["npho"], events["relative_time"], floors, batch_size=64)
    assert worst["filled"] == 0.0 and max(worst.values()) <= 1e-4, worst

    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "inp.onnx"), providers=["CPUExecutionProvider"])
    npho, _, filled = session.run(None, {"npho": events["npho"][:7], "relative_time": events["relative_time"][:7]})
    dead = ~np.isfinite(events["npho"][:7]) | (np.abs(events["npho"][:7]) > 9e9)
    np.testing.assert_array_equal(filled, dead)  # a batch of 7: the batch axis is dynamic
    np.testing.assert_array_equal(npho[~dead], events["npho"][:7][~dead])  # healthy channels untouched
    assert (np.abs(npho[dead]) < 1e9).all()


def test_torchscript_regressor_gives_physical_units_and_carries_its_metadata(tmp_path, events):
    cfg = validate({"model": {"size": "tiny", "tasks": ["position", "angle"]}}, RegressorConfig)
    save_checkpoint({"kind": "regressor", "model_state_dict": build_regressor(cfg).state_dict(),
                     "config": cfg.model_dump(mode="json")}, tmp_path / "reg.pth")
    meta = export_model(tmp_path / "reg.pth", tmp_path / "reg.pt", "torchscript")
    loaded = torch.jit.load(str(tmp_path / "reg.pt"))
    graph = make_graph(load_trained(tmp_path / "reg.pth", ("regressor",), "a test"), "regressor")
    npho, rel_time = torch.from_numpy(events["npho"][:5]), torch.from_numpy(events["relative_time"][:5])
    with torch.no_grad():
        for ours, ref in zip(loaded(npho, rel_time), graph(npho, rel_time), strict=True):
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    with zipfile.ZipFile(tmp_path / "reg.pt") as archive:
        stored = json.loads(archive.read(next(n for n in archive.namelist() if n.endswith("extra/xecmae.json"))))
    assert stored == meta and json.loads(stored["outputs"]) == {"position": "cm, float32 (batch, 3): u, v, w",
                                                                "angle": "deg, float32 (batch, 2): theta, phi"}
