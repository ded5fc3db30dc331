"""Input resolution: file, glob, directory, list, text file of paths; clear errors for bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from xecmae.data.rootio import write_tree
from xecmae.data.sources import is_sim, resolve_inputs
from xecmae.errors import UserError


def _root(path) -> str:
    write_tree(str(path), [{"x": np.arange(3, dtype=np.float32)}])
    return str(path)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "sub").mkdir()
    names = [_root(tmp_path / "b.root"), _root(tmp_path / "a.root"), _root(tmp_path / "sub" / "c.root")]
    (tmp_path / "notes.txt").write_text("not data\n")
    return tmp_path, sorted(names)


def test_single_file(folder):
    tmp, _ = folder
    assert resolve_inputs(str(tmp / "a.root")) == [str(tmp / "a.root")]


def test_glob_is_sorted_and_recursive_with_double_star(folder):
    tmp, names = folder
    assert resolve_inputs(str(tmp / "*.root")) == [str(tmp / "a.root"), str(tmp / "b.root")]
    assert resolve_inputs(str(tmp / "**" / "*.root")) == names


def test_directory_gives_its_root_files(folder):
    tmp, _ = folder
    assert resolve_inputs(str(tmp)) == [str(tmp / "a.root"), str(tmp / "b.root")]


def test_list_is_merged_sorted_and_deduplicated(folder):
    tmp, names = folder
    got = resolve_inputs([str(tmp / "sub" / "c.root"), str(tmp / "*.root"), str(tmp / "a.root")])
    assert got == names


def test_text_file_of_paths_with_comments_and_relative_paths(folder):
    tmp, names = folder
    listing = tmp / "files.txt"
    listing.write_text(f"# training files\n\nb.root\n{tmp / 'a.root'}   # absolute\nsub/*.root\n")
    assert resolve_inputs(str(listing)) == names


def test_sim_url_passes_through():
    assert resolve_inputs("sim://signal?seed=1&events=10") == ["sim://signal?seed=1&events=10"]
    assert is_sim(["sim://signal"]) and not is_sim("a.root")


@pytest.mark.parametrize("spec, problem", [
    ("missing.root", "no such file or directory"),
    ("nothing_*.root", "matches no file"),
])
def test_missing_inputs_name_the_path(tmp_path, spec, problem):
    with pytest.raises(UserError, match=problem) as info:
        resolve_inputs(str(tmp_path / spec))
    assert str(tmp_path / spec) in str(info.value)


def test_text_file_that_is_not_root_nor_a_list(folder):
    tmp, _ = folder
    with pytest.raises(UserError) as info:
        resolve_inputs(str(tmp / "notes.txt"))
    message = str(info.value)
    assert "notes.txt" in message and "not a ROOT file" in message and "not a list of paths" in message


def test_root_named_text_file_is_not_root(tmp_path):
    fake = tmp_path / "fake.root"
    fake.write_text("hello\n")
    with pytest.raises(UserError, match=r"fake\.root: not a ROOT file"):
        resolve_inputs(str(fake))
    empty = tmp_path / "empty.root"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty file"):
        resolve_inputs(str(tmp_path / "*.root"))


def test_empty_directory_and_no_input(tmp_path):
    with pytest.raises(UserError, match=r"holds no \.root file"):
        resolve_inputs(str(tmp_path))
    for nothing in (None, "", []):
        with pytest.raises(UserError, match="no input given"):
            resolve_inputs(nothing)


def test_list_line_that_does_not_exist_names_file_and_line(folder):
    tmp, _ = folder
    listing = tmp / "files.txt"
    listing.write_text("a.root\ngone.root\n")
    with pytest.raises(UserError, match=r"files.txt line 2: .*gone.root: no such file"):
        resolve_inputs(str(listing))


def test_sim_cannot_be_mixed_with_files(folder):
    tmp, _ = folder
    with pytest.raises(UserError, match="cannot be combined"):
        resolve_inputs(["sim://signal", str(tmp / "a.root")])
