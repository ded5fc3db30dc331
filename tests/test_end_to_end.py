"""The README's path from simulated events to an exported model, run exactly as written there."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import uproot

from xecmae.cli import main
from xecmae.simulate import EventGenerator

README = Path(__file__).resolve().parents[1] / "README.md"
ONNX_FLOORS = {"position": 0.1, "energy": 1e-4}  # cm, GeV: values above these are compared relatively


def readme_block(name: str) -> str:
    """The fenced block between ``<!-- NAME: begin -->`` and ``<!-- NAME: end -->``."""
    text = README.read_text()
    found = re.search(rf"<!-- {name}: begin -->\s*```\w*\n(.*?)```\s*<!-- {name}: end -->", text, re.S)
    assert found, f"README has no {name} block"
    return found.group(1)


def test_the_readme_commands_take_a_model_from_simulation_to_onnxruntime(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lines = [line for line in readme_block("end-to-end").splitlines() if line.strip()]
    assert [shlex.split(line)[1] for line in lines] == ["simulate", "simulate", "pretrain", "finetune", "predict",
                                                         "validate", "export"]
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "xecmae"
        assert main(words[1:]) == 0, line

    with uproot.open("reco.root") as f:
        reco = f["tree"].arrays(library="np")
        meta = f["metadata"].arrays(library="np")
    with uproot.open("test.root") as f:
        truth = f["tree"].arrays(["run", "event", "uvwTruth", "energyTruth"], library="np")
    assert len(reco["event"]) == 256
    np.testing.assert_array_equal(reco["event"], truth["event"])
    np.testing.assert_array_equal(reco["uvwTruth"], truth["uvwTruth"])
    np.testing.assert_allclose(reco["energyPredMeV"], 1000 * reco["energyPred"], rtol=1e-6)
    assert str(meta["model_kind"][0]) == "regressor" and str(meta["tasks"][0]) == "position,energy"

    report = json.loads(Path("validation/validation.json").read_text())
    assert report["events"]["read"] == 256 and 0 < report["events"]["fiducial"] < 256
    assert {"position_res_u_cm", "position_res_3d_cm", "energy_res_rel"} <= set(report["metrics"]["model"])
    assert {"position_res_u_cm", "energy_res_rel"} <= set(report["metrics"]["classical"])
    assert all(Path(p).stat().st_size > 10_000 for p in report["figures"]) and len(report["figures"]) == 5

    from xecmae.apps.export import onnx_parity
    from xecmae.apps.graphs import make_graph
    from xecmae.apps.trained import load_trained

    graph = make_graph(load_trained("artifacts/reg/regressor_checkpoint_best.pth", ("regressor",), "a test"),
                       "regressor")
    raw = EventGenerator(seed=3).generate(1000)  # onnxruntime against PyTorch on 1,000 simulated events
    worst = onnx_parity("regressor.onnx", graph, raw["npho"], raw["relative_time"], ONNX_FLOORS)
    assert max(worst.values()) <= 1e-4, worst

    capsys.readouterr()
    exec(compile(readme_block("onnxruntime"), "README onnxruntime example", "exec"), {})  # no torch needed
    assert "'position': 'cm" in capsys.readouterr().out
