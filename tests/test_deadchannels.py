"""Dead-channel maps from every source, applied on top of a file's own; filling keeps healthy channels."""

import awkward as ak
import numpy as np
import pytest
import torch
import uproot

from xecmae.apps.events import EventSource
from xecmae.apps.fill import fill_dead_channels
from xecmae.apps.filling import inpainter_fill, neighbour_fill
from xecmae.cli import main
from xecmae.config import InpainterConfig
from xecmae.configload import validate
from xecmae.data.deadchannels import apply_dead_channels, dead_channels, parse_dead_channels
from xecmae.data.rootio import write_tree
from xecmae.detector.normalize import Normalizer
from xecmae.errors import UserError
from xecmae.models import build_mae
from xecmae.simulate import clustered_dead_mask, parse_sim_url, random_dead_mask
from xecmae.train.checkpoint import save_checkpoint

IDS = [5, 17, 1200, 4600, 4759]
RUN7 = [3, 4, 4100]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """The same map (IDS; run 7: RUN7) written in every format a user may have."""
    root = tmp_path_factory.mktemp("dead")
    (root / "ids.txt").write_text("# dead channels of run 3\n5, 17\n1200   # a comment\n\n4600,4759\n")
    rows = [f"3,{i}" for i in IDS] + [f"7,{i}" for i in RUN7]
    (root / "runs.csv").write_text("run,sensor_id,reason\n" + "\n".join(f"{r},hv" for r in rows) + "\n")
    mask = np.zeros(4760, bool)
    mask[IDS] = True
    with uproot.recreate(root / "maps.root") as f:
        f.mktree("jagged", {"deadChannels": "var * int32"}).extend({"deadChannels": ak.Array([IDS[:2], IDS[2:]])})
        f.mktree("scalar", {"sensor_id": np.int32}).extend({"sensor_id": np.array(IDS, np.int32)})
        per_event = np.tile(mask, (4, 1))
        per_event[3] = False
        per_event[3, RUN7] = True
        f.mktree("events", {"dead": np.dtype((bool, (4760,))), "run": np.int32}).extend(
            {"dead": per_event, "run": np.array([3, 3, 3, 7], np.int32)})
    return {"ids": str(root / "ids.txt"), "table": str(root / "runs.csv"), "root": str(root / "maps.root")}


def test_every_source_gives_the_same_mask(sources):
    expected = np.zeros(4760, bool)
    expected[IDS] = True
    run7 = np.zeros(4760, bool)
    run7[RUN7] = True
    root = sources["root"]
    for source, run in [(sources["ids"], None), (sources["table"], 3), (f"{root}:jagged/deadChannels", None),
                        (f"{root}:scalar/sensor_id", None), (f"{root}:events/dead", 3)]:
        mask = dead_channels(source, run=run)
        assert mask.shape == (4760,) and mask.dtype == bool
        np.testing.assert_array_equal(mask, expected, err_msg=source)
    for table in (sources["table"], f"{root}:events/dead"):  # a per-run table picks the event's run
        np.testing.assert_array_equal(dead_channels(table, run=7), run7)
        masks = parse_dead_channels(table).masks(np.array([7, 3, 7]))
        np.testing.assert_array_equal(masks, np.stack([run7, expected, run7]))
    # the generator's maps, fixed by (seed, run) as in the simulator
    np.testing.assert_array_equal(dead_channels("clustered:0.02:5", run=4), clustered_dead_mask(0.02, 5, 4))
    np.testing.assert_array_equal(dead_channels("random:0.01", run=2), random_dead_mask(0.01, 0, 2))
    assert dead_channels("clustered:0.02").sum() == round(0.02 * 4760)
    # a sim:// source and the simulator take the same strings
    np.testing.assert_array_equal(parse_sim_url(f"sim://signal?dead_map={sources['table']}&run=7").generator().dead,
                                  run7)


def test_simulate_takes_the_option_and_its_old_name(sources, tmp_path):
    for flag in ("--dead-channels", "--dead-map"):
        out = tmp_path / f"{flag[2:]}.root"
        argv = ["simulate", "--events", "4", "--out", str(out), "--detector", "ideal", "--run", "7", "--no-progress"]
        assert main([*argv, flag, sources["table"]]) == 0
        with uproot.open(out) as f:
            npho = f["tree"]["npho"].array(library="np")
        assert np.array_equal(np.flatnonzero((npho > 9e9).all(0)), RUN7)


@pytest.mark.parametrize("content, source, message", [
    ("1 2 4760\n7 9000 -1\n", "{f}", "sensor ids -1, 4760, 9000 are outside 0-4759"),
    ("1 2\nthree 4\n5 x7\n", "{f}", "line 2 'three', line 3 'x7' are not sensor ids"),
    ("run sensor_id\n3 5\n3\n4 five\n", "{f}", "line 3 '3', line 4 '4 five' are not 'run sensor_id' pairs"),
    ("run,sensor_id\n3,5\n3,4760\n", "{f}", "sensor id 4760 is outside 0-4759"),
    ("run,sensor_id\n3,5\n", "{f}@9", "run(s) 9 that the table lacks (it has run(s) 3)"),
    ("", "{f}.missing", "cannot be read"),
    ("", "clustered:1.5", "must be a number in [0, 1)"),
    ("", "random:0.01:-2", "must be a non-negative integer"),
    ("", "{root}:events/nothing", "has no branch 'nothing' (it has dead, run)"),
])
def test_a_bad_source_is_one_line_naming_what_is_wrong(tmp_path, sources, content, source, message):
    path = tmp_path / "map.txt"
    path.write_text(content)
    text, _, run = source.format(f=path, root=sources["root"]).partition("@")
    with pytest.raises(UserError) as err:
        dead_channels(text, run=int(run) if run else None)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_the_command_line_refuses_a_bad_map_in_one_line(tmp_path, capsys, sim_data):
    bad = tmp_path / "bad.txt"
    bad.write_text("12 4800\n")
    for command in (["simulate", "--events", "2", "--out", str(tmp_path / "x.root")],
                    ["predict", "--checkpoint", str(tmp_path / "none.pth"), "--input", sim_data["val"],
                     "--output", str(tmp_path / "y.root")]):
        assert main([*command, "--dead-channels", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "sensor id 4800 is outside 0-4759" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]


def test_given_dead_channels_are_added_to_what_the_file_marks(sim_data, sources, tmp_path):
    plain = next(EventSource(sim_data["val"]).chunks(EventSource(sim_data["val"]).plan(), 64))
    source = EventSource(sim_data["val"], dead=parse_dead_channels(sources["ids"]))
    chunk = next(source.chunks(source.plan(), 64))
    file_dead = plain["npho"] > 9e9
    assert file_dead.any() and not file_dead[:, IDS].all()
    assert (chunk["npho"][:, IDS] == np.float32(1e10)).all() and (chunk["time"][:, IDS] == np.float32(1e10)).all()
    others = np.ones(4760, bool)
    others[IDS] = False
    np.testing.assert_array_equal(chunk["npho"][:, others], plain["npho"][:, others])  # bit for bit
    np.testing.assert_array_equal(chunk["time"][:, others], plain["time"][:, others])
    # a per-run table needs every run of the files (the simulated files are run 1)
    table = EventSource(sim_data["val"], dead=parse_dead_channels(sources["table"]))
    with pytest.raises(UserError, match=r"has run\(s\) 1 that the table lacks"):
        table.plan()


@pytest.fixture(scope="module")
def inpainter(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("inp") / "inpainter.pth"
    cfg = validate({"model": {"size": "tiny"}}, InpainterConfig)
    torch.manual_seed(0)
    save_checkpoint({"kind": "inpainter", "model_state_dict": build_mae(cfg).state_dict(),
                     "config": cfg.model_dump(mode="json")}, path)
    return str(path)


def test_filling_replaces_only_dead_channels_healthy_ones_bit_for_bit(sim_data, inpainter):
    from xecmae.apps.fill import load_inpainter

    chunk = next(EventSource(sim_data["val"]).chunks(EventSource(sim_data["val"]).plan(), 3))
    npho, time = apply_dead_channels(chunk["npho"], chunk["time"], clustered_dead_mask(0.05, 1, 1))
    dead = npho > 9e9
    model = load_inpainter(inpainter, torch.device("cpu"))
    for fill in (lambda n, t: neighbour_fill(n, t, Normalizer()), lambda n, t: inpainter_fill(model, n, t, 3)):
        new_npho, new_time, filled = fill(npho, time)
        np.testing.assert_array_equal(filled, dead)
        np.testing.assert_array_equal(new_npho[~dead], npho[~dead])
        np.testing.assert_array_equal(new_time[~dead], time[~dead])
        assert np.isfinite(new_npho[dead]).all() and (np.abs(new_npho[dead]) < 1e9).all()
        assert np.isfinite(new_time[dead]).all() and (np.abs(new_time[dead]) < 1e-5).all()  # seconds
    # the neighbour average is what it says: a smooth event is filled close to its own values
    smooth = np.full((1, 4760), 500.0, np.float32)
    filled_npho, _, _ = neighbour_fill(*apply_dead_channels(smooth, np.zeros_like(smooth), dead[:1]), Normalizer())
    np.testing.assert_allclose(filled_npho, smooth, rtol=1e-5)


def test_fill_also_fills_the_given_dead_channels(sim_data, sources, inpainter, tmp_path):
    with uproot.open(sim_data["val"]) as f:
        before = f["tree"].arrays(library="np", entry_stop=3)
    small, out = tmp_path / "small.root", tmp_path / "filled.root"
    write_tree(str(small), [before])
    fill_dead_channels(inpainter, small, out, chunk_events=2, batch_size=2, dead=parse_dead_channels(sources["ids"]))
    with uproot.open(out) as f:
        after = f["tree"].arrays(["npho", "relative_time", "filled"], library="np")
    expected = before["npho"] > 9e9
    expected[:, IDS] = True
    np.testing.assert_array_equal(after["filled"], expected)
    for branch in ("npho", "relative_time"):
        np.testing.assert_array_equal(after[branch][~expected], before[branch][~expected])
    assert (np.abs(after["npho"][:, IDS]) < 1e9).all()
