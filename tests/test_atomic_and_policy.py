"""The atomic-write helper, the one ROOT writer and the checkpoint policy, without training."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import uproot

from xecmae.data.atomic import atomic_path, atomic_paths, partial_name, torch_save, write_text
from xecmae.data.rootio import TreeWriter, write_tree
from xecmae.train.policy import CheckpointPolicy, Checkpoints


class Crash(Exception):
    pass


def test_an_exception_leaves_no_partial_file_and_the_previous_file_intact(tmp_path):
    final = tmp_path / "report.json"
    final.write_text("old")
    with pytest.raises(Crash), atomic_path(final) as tmp:
        assert tmp == partial_name(final) and tmp.name == f".report.json.partial-{os.getpid()}"
        tmp.write_text("half")
        raise Crash
    assert final.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_completed_write_replaces_the_file_whole(tmp_path):
    final = write_text(tmp_path / "a.txt", "new text")
    assert final.read_text() == "new text"
    torch_save({"w": torch.arange(3)}, tmp_path / "c.pth")
    assert torch.equal(torch.load(tmp_path / "c.pth", weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.pth"]


def test_several_files_appear_only_together(tmp_path):
    finals = [tmp_path / "f_0.root", tmp_path / "f_1.root"]
    with pytest.raises(Crash), atomic_paths(finals) as temps:
        temps[0].write_bytes(b"complete")
        temps[1].write_bytes(b"hal")
        raise Crash
    assert list(tmp_path.iterdir()) == []
    with atomic_paths(finals) as temps:
        for t in temps:
            t.write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f_0.root", "f_1.root"]


def test_the_root_writer_gathers_baskets_writes_metadata_and_removes_a_failed_file(tmp_path):
    path = tmp_path / "out.root"
    with TreeWriter(path, "tree", basket_events=7) as out:
        for _ in range(4):
            out.extend({"x": np.arange(3, dtype=np.int64), "v": np.ones((3, 5), np.float32)})
        out.write_metadata({"name": "abc", "scale": 2.5, "events": np.int64(12), "count": 3})
    with uproot.open(path) as f:
        tree = f["tree"]
        assert tree.num_entries == 12 and tree["x"].num_baskets == 2  # 6 + 6 events
        assert tree["v"].typename == "float[5]"
        meta = f["metadata"].arrays(library="np")
        assert meta["name"][0] == "abc" and meta["scale"][0] == 2.5 and meta["events"][0] == 12
        assert f["metadata"]["count"].typename == "int64_t" and f["metadata"]["scale"].typename == "double"
    with pytest.raises(Crash), TreeWriter(path, "tree") as out:
        out.extend({"x": np.arange(2)})
        raise Crash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.root"]  # the first file, untouched
    with uproot.open(path) as f:
        assert f["tree"].num_entries == 12
    with pytest.raises(ValueError, match="branch types"):
        write_tree(tmp_path / "empty.root", [])
    assert not (tmp_path / "empty.root").exists()


# --- the checkpoint policy -------------------------------------------------------------------------
def run_policy(tmp_path: Path, epochs: int, steps_per_epoch: int, stop_at: int = 0, best_epochs=(1,),
               **settings) -> tuple[list[str], set[str]]:
    """Drive the policy as the loop does; returns the write order and the files left in the run directory."""
    run = tmp_path / "run"
    run.mkdir()
    order: list[str] = []

    def payload() -> dict:
        order.append("payload")
        return {"step": torch.tensor(step)}

    checkpoints = Checkpoints(CheckpointPolicy(run, "mae", **settings), payload, lambda: {"w": torch.ones(1)})
    step = 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 1
            order += [p.name for p in checkpoints.after_step(step)]
            if step == stop_at:
                order += [p.name for p in checkpoints.at_stop()]
                return order, {p.name for p in run.iterdir()}
        order += [p.name for p in checkpoints.end_of_epoch(epoch, epoch in best_epochs, epoch == epochs)]
    return order, {p.name for p in run.iterdir()}


def test_the_default_policy_writes_best_before_last_and_the_final_encoder(tmp_path):
    order, files = run_policy(tmp_path, epochs=3, steps_per_epoch=2, best_epochs=(1, 3))
    assert files == {"mae_checkpoint_best.pth", "mae_checkpoint_last.pth", "mae_encoder_epoch_3.pth"}
    assert order == ["payload", "mae_checkpoint_best.pth", "mae_checkpoint_last.pth",  # epoch 1: one payload
                     "payload", "mae_checkpoint_last.pth",
                     "payload", "mae_checkpoint_best.pth", "mae_checkpoint_last.pth", "mae_encoder_epoch_3.pth"]


def test_per_epoch_files_every_save_interval_and_a_best_copy(tmp_path):
    copy = tmp_path / "mae_pretrained.pth"
    _, files = run_policy(tmp_path, epochs=4, steps_per_epoch=1, best_epochs=(2,), save_interval=2, best_copy=copy)
    assert files == {"mae_checkpoint_best.pth", "mae_checkpoint_last.pth", "mae_checkpoint_epoch_2.pth",
                     "mae_checkpoint_epoch_4.pth", "mae_encoder_epoch_2.pth", "mae_encoder_epoch_4.pth"}
    assert torch.load(copy, weights_only=True)["step"] == 2  # the best epoch's


def test_every_n_steps_and_a_stop_write_last_only(tmp_path):
    order, files = run_policy(tmp_path, epochs=3, steps_per_epoch=4, stop_at=6, save_every_steps=3,
                              encoder_export=False)
    assert files == {"mae_checkpoint_last.pth", "mae_checkpoint_best.pth"}
    assert [name for name in order if name != "payload"] == [
        "mae_checkpoint_last.pth",  # step 3
        "mae_checkpoint_best.pth", "mae_checkpoint_last.pth",  # end of epoch 1
        "mae_checkpoint_last.pth", "mae_checkpoint_last.pth"]  # step 6, then the stop
    assert torch.load(tmp_path / "run" / "mae_checkpoint_last.pth", weights_only=True)["step"] == 6


def test_an_encoderless_kind_exports_nothing_and_other_ranks_write_nothing(tmp_path):
    _, files = run_policy(tmp_path, epochs=2, steps_per_epoch=1, save_interval=1, encoder_export=False)
    assert files == {"mae_checkpoint_best.pth", "mae_checkpoint_last.pth", "mae_checkpoint_epoch_1.pth",
                     "mae_checkpoint_epoch_2.pth"}
    quiet = Checkpoints(CheckpointPolicy(tmp_path / "other", "mae"), dict, dict, enabled=False)
    assert quiet.end_of_epoch(1, True, True) == [] and not (tmp_path / "other").exists()


def test_the_policy_reads_the_checkpoint_section(tmp_path):
    from xecmae.config import MAEConfig

    ck = MAEConfig().checkpoint.model_copy(update={"save_path": str(tmp_path / "best.pth"), "save_interval": 5})
    policy = CheckpointPolicy.from_config(ck, tmp_path, "inpainter", encoder_export=True)
    assert policy.best_copy == tmp_path / "best.pth" and policy.save_interval == 5
    assert policy.save_every_steps == ck.save_every_steps
    assert policy.last == tmp_path / "inpainter_checkpoint_last.pth"
    legacy_dir = ck.model_copy(update={"save_path": str(tmp_path / "runs")})
    assert CheckpointPolicy.from_config(legacy_dir, tmp_path, "mae").best_copy is None
