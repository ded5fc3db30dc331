"""Dead-channel maps stored in a ROOT file: ``FILE.root:TREE/BRANCH`` (see :mod:`xecmae.data.deadchannels`).

The branch holds sensor ids (an integer per entry, or an array of them per entry) or a per-entry
bool[4760] mask. With a ``run`` branch in the same tree (and more than one run, or a table
wanted), each run's entries together make its map; without one, all entries make one map.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

from xecmae.data.deadmap import DeadChannels, table_from_pairs
from xecmae.detector import geometry as geo
from xecmae.errors import UserError
from xecmae.simulate.deadmaps import dead_mask_from_ids

DEFAULT_TREE = "tree"


def split_root_source(source: str) -> tuple[str, str, str]:
    """``FILE.root:TREE/BRANCH`` -> (file, tree, branch); ``FILE.root:BRANCH`` takes tree ``tree``."""
    path, sep, inside = source.rpartition(".root:")
    if not sep:
        raise UserError(f"dead channels {source}: name the branch too, e.g. {source}:tree/deadChannels")
    tree, _, branch = inside.rpartition("/")
    if not branch:
        raise UserError(f"dead channels {source}: no branch after the file name (FILE.root:TREE/BRANCH)")
    return path + ".root", tree or DEFAULT_TREE, branch


def _entries(source: str, values) -> tuple[np.ndarray, np.ndarray]:
    """Integer ids of an awkward array (scalar, fixed or jagged per entry) -> (entry of each id, ids)."""
    if values.ndim == 1:
        flat, entry = ak.to_numpy(values), np.arange(len(values))
    else:
        counts = ak.to_numpy(ak.num(values, axis=1))
        flat = ak.to_numpy(ak.flatten(values, axis=None))
        entry = np.repeat(np.arange(len(values)), counts)
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        whole = np.isfinite(flat) & (flat == np.round(flat))
        if not whole.all():
            raise UserError(f"dead map {source}: sensor ids must be whole numbers, found "
                            f"{', '.join(f'{v:g}' for v in np.unique(flat[~whole])[:8])}")
        flat = flat.astype(np.int64)
    return entry, np.asarray(flat, dtype=np.int64)


def read_root_map(source: str) -> DeadChannels:
    """The map(s) of ``FILE.root:TREE/BRANCH``: one :class:`DeadChannels`, per run if the tree has runs."""
    from xecmae.data.rootio import get_tree, open_file

    path, tree_name, branch = split_root_source(source)
    with open_file(path) as file:
        tree = get_tree(file, path, tree_name)
        present = list(tree.keys())
        if branch not in present:
            names = ", ".join(present[:20])
            raise UserError(f"dead channels {source}: tree {tree_name!r} has no branch {branch!r} (it has {names})")
        try:
            values = tree[branch].array(library="ak")
            runs = (np.asarray(tree["run"].array(library="np"), dtype=np.int64)
                    if "run" in present and branch != "run" else None)
        except Exception as exc:
            raise UserError(f"dead channels {source}: cannot read the branch ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if len(values) == 0:
        raise UserError(f"dead channels {source}: the branch has no entries")
    try:
        dense = ak.to_numpy(values)  # entries of one fixed size
    except ValueError:
        dense = None  # jagged: arrays of ids of varying length
    if dense is not None and dense.dtype == bool:
        if dense.ndim == 1 and len(dense) == geo.N_SENSORS and runs is None:  # one flag per sensor, entry = id
            dense = dense[None, :]
        if dense.ndim != 2 or dense.shape[1] != geo.N_SENSORS:
            raise UserError(f"dead channels {source}: a boolean branch needs {geo.N_SENSORS} flags per entry "
                            f"(or {geo.N_SENSORS} entries of one flag), got shape {dense.shape}")
        entry, ids = np.nonzero(dense)
    else:
        entry, ids = _entries(source, values)
    if runs is None:
        return DeadChannels(source, fixed=dead_mask_from_ids(ids, source=f"dead map {source}"))
    return table_from_pairs(source, runs[entry], ids, extra_runs=runs)
