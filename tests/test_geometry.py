import numpy as np
import pytest
import torch

from xecmae.detector import geometry as geo


def test_positions_match_reference_to_a_tenth_of_a_millimetre(reference_positions):
    assert reference_positions.shape == (geo.N_SENSORS, 4)
    np.testing.assert_array_equal(reference_positions[:, 0], np.arange(geo.N_SENSORS))
    error_cm = np.linalg.norm(geo.sensor_positions() - reference_positions[:, 1:4], axis=1)
    assert error_cm.max() < 0.01, f"sensor {error_cm.argmax()} is off by {error_cm.max() * 10:.3f} mm"


def test_directions_match_reference_within_two_degrees(reference_directions):
    ref = reference_directions[:, 1:4] / np.linalg.norm(reference_directions[:, 1:4], axis=1, keepdims=True)
    mine = geo.sensor_directions()
    np.testing.assert_allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-12)
    angle = np.degrees(np.arccos(np.clip((mine * ref).sum(1), -1, 1)))
    assert angle.max() < 2.0, f"sensor {angle.argmax()} faces {angle.max():.2f} deg off"


def test_face_assignment_matches_reference(reference_directions):
    code_to_face = {0: "inner", 1: "outer", 2: "us", 3: "ds", 4: "top", 5: "bottom"}
    expected = np.array([geo.FACE_NAMES.index(code_to_face[int(c)]) for c in reference_directions[:, 7]])
    np.testing.assert_array_equal(geo.face_of_sensor(), expected)


def test_every_sensor_appears_once_across_the_face_representations():
    ids = np.concatenate([
        geo.inner_map().ravel(), geo.lateral_map("us").ravel(), geo.lateral_map("ds").ravel(),
        np.unique(geo.outer_fine_map()), geo.hex_ids("top"), geo.hex_ids("bottom"),
    ])
    np.testing.assert_array_equal(np.sort(ids), np.arange(geo.N_SENSORS))
    outer = np.concatenate([geo.outer_coarse_map().ravel(), geo.outer_centre_map().ravel()])
    # the 12 coarse ids inside the centre patch appear in both maps, every other id once
    assert set(outer) == set(geo.outer_ids())
    assert len(geo.outer_ids()) == 234 and len(set(geo.outer_ids())) == 234
    assert len(set(geo.outer_centre_map().ravel())) == 30


def test_outer_coarse_map_is_z_by_phi_not_reshape_9_24():
    coarse = geo.outer_coarse_map()
    assert coarse.shape == (9, 24)
    assert coarse[0, 0] == 4092 and coarse[1, 0] == 4093 and coarse[0, 1] == 4101
    assert not np.array_equal(coarse, np.arange(4092, 4308).reshape(9, 24))
    z = geo.sensor_positions()[coarse, 2]
    # rows are z: constant along a row (outside the centre patch), increasing down the rows
    assert np.all(np.diff(z[:, 0]) > 0)


def _grid_pairs(grid: np.ndarray):
    """All (a, b) pairs of distinct sensors in horizontally or vertically adjacent cells."""
    pairs = np.concatenate([
        np.stack([grid[:, :-1].ravel(), grid[:, 1:].ravel()], 1),
        np.stack([grid[:-1, :].ravel(), grid[1:, :].ravel()], 1),
    ])
    return pairs[pairs[:, 0] != pairs[:, 1]]


def _local_frame(face: str) -> tuple[np.ndarray, np.ndarray]:
    """Face-local 2D coordinates along the grid's row and column axes, and the nominal
    pitch of every sensor along each axis, both (4760, 2)."""
    pos = geo.sensor_positions()
    r = np.hypot(pos[:, 0], pos[:, 1])
    phi = np.arctan2(pos[:, 1], -pos[:, 0])
    coords, pitch = np.zeros((geo.N_SENSORS, 2)), np.zeros((geo.N_SENSORS, 2))
    if face == "inner":
        coords[:] = np.stack([-geo.INNER_RADIUS * phi, pos[:, 2]], 1)
        pitch[:] = [geo.INNER_RADIUS * np.deg2rad(geo.INNER_DPHI), geo.INNER_DZ]
    elif face in ("us", "ds"):
        # rings have different radii, so measure along phi in radians, along the ring in cm
        coords[:] = np.stack([-phi, np.hypot(r - geo.LATERAL_R0, np.abs(pos[:, 2]) - geo.LATERAL_Z0)], 1)
        pitch[:] = [np.deg2rad(geo.OUTER_DPHI), np.hypot(geo.LATERAL_DR, geo.LATERAL_DZ)]
    else:
        coords[:] = np.stack([pos[:, 2], -geo.OUTER_RADIUS * phi], 1)
        pitch[:] = [geo.OUTER_DZ, geo.OUTER_RADIUS * np.deg2rad(geo.OUTER_DPHI)]
        centre = geo.outer_centre_map().ravel()
        pitch[centre] = [geo.CENTRE_DZ, geo.OUTER_RADIUS * np.deg2rad(geo.CENTRE_DPHI)]
    return coords, pitch


@pytest.mark.parametrize("face", ["inner", "us", "ds", "outer"])
def test_grid_neighbours_are_physically_adjacent(face):
    grid = {"inner": geo.inner_map(), "us": geo.lateral_map("us"), "ds": geo.lateral_map("ds"),
            "outer": geo.outer_fine_map()}[face]
    coords, pitch = _local_frame(face)
    for axis, (a, b) in enumerate([(grid[:-1, :], grid[1:, :]), (grid[:, :-1], grid[:, 1:])]):
        pairs = np.stack([a.ravel(), b.ravel()], 1)
        pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
        delta = np.abs(coords[pairs[:, 0]] - coords[pairs[:, 1]])
        along, cross = delta[:, axis], delta[:, 1 - axis]
        pitch_along = pitch[pairs, axis].mean(1)
        # neighbours one step apart along the axis; across it at most half of each cell (the
        # outer centre patch is offset against the coarse cells it borders)
        half_cross = pitch[pairs, 1 - axis].sum(1) / 2
        far = np.flatnonzero((along > 1.2 * pitch_along) | (cross > half_cross + 1e-6))
        assert far.size == 0, f"{face}: sensors {pairs[far[0]]} are not adjacent ({delta[far[0]]} cm)"
        assert (along > 0.5 * pitch_along).all()


def test_scrambled_outer_map_would_fail_the_adjacency_check():
    scrambled = np.arange(4092, 4308).reshape(9, 24)
    pos = geo.sensor_positions()
    pairs = _grid_pairs(scrambled)
    dist = np.linalg.norm(pos[pairs[:, 0]] - pos[pairs[:, 1]], axis=1)
    assert dist.max() > 2 * geo.OUTER_DZ


@pytest.mark.parametrize("face", geo.HEX_FACES)
def test_hex_graph_connects_exactly_the_pairs_closer_than_8_cm(face):
    ids = geo.hex_ids(face)
    pos = geo.sensor_positions()[ids]
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    expected = {(a, b) for a, b in zip(*np.nonzero((dist < 8.0) & (dist > 0)), strict=True)}
    graph = geo.hex_graph()
    edges = {(int(s), int(t)) for s, t, k in graph.edges if k > 0}
    assert edges == expected
    assert all(k == 0 for s, t, k in graph.edges if s == t)
    assert (graph.neighbours[:, 0] == np.arange(len(ids))).all()


def test_hex_edge_types_follow_direction_not_row_parity():
    graph = geo.hex_graph()
    coords = geo.hex_plane_coords()
    for source, target, etype in graph.edges:
        if etype == 0:
            continue
        dz, dr = coords[source] - coords[target]
        angle = np.degrees(np.arctan2(dr, dz)) % 360
        centre = 60.0 * (etype - 1)
        assert min(abs(angle - centre), 360 - abs(angle - centre)) <= 30.0
    # opposite directions are paired: if b is a's type-t neighbour, a is b's type-(t+3) neighbour
    for node in range(73):
        for t in range(1, 7):
            other = graph.neighbours[node, t]
            if other >= 0:
                assert graph.neighbours[other, (t + 2) % 6 + 1] == node


def test_outer_fine_grid_round_trip_preserves_every_sensor():
    grid = geo.OuterGrid()
    gen = torch.Generator().manual_seed(0)
    npho = torch.rand(3, geo.N_SENSORS, generator=gen, dtype=torch.float64) * 1e4
    time = torch.randn(3, geo.N_SENSORS, generator=gen, dtype=torch.float64) * 1e-8
    ok = torch.ones_like(npho, dtype=torch.bool)
    grid.double()
    fine_npho, fine_time, cov_n, _cov_t = grid.to_grid(npho, time, ok, ok)
    assert fine_npho.shape == (3, 45, 72) and (cov_n == 1).all()
    back_npho, back_time = grid.to_sensors(fine_npho, fine_time)
    ids = torch.tensor(geo.outer_ids())  # a copy: the cached index array is read-only
    torch.testing.assert_close(back_npho, npho[:, ids], rtol=1e-12, atol=0)
    torch.testing.assert_close(back_time, time[:, ids], rtol=1e-12, atol=1e-30)
    # npho is spread: a coarse PMT's 15 cells each hold a fifteenth of its photons
    owner = torch.tensor(geo.outer_fine_map())
    assert torch.allclose(fine_npho[0, 0, 0], npho[0, owner[0, 0]] / 15)


def test_outer_pooling_keeps_total_light_and_skips_invalid_cells():
    grid = geo.OuterGrid((3, 3))
    assert grid.shape == (15, 24)
    npho = torch.full((1, geo.N_SENSORS), 150.0)
    time = torch.zeros(1, geo.N_SENSORS)
    valid = torch.ones_like(npho, dtype=torch.bool)
    density, _, covered, _ = grid.to_grid(npho, time, valid, valid)
    total = density.sum() * 9  # each pooled cell averages 9 fine cells
    assert torch.isclose(total, torch.tensor(150.0 * 234))
    valid[0, 4092] = False  # a dead corner PMT: its cells are not averaged in
    density, _, covered, _ = grid.to_grid(npho, time, valid, valid)
    # pooled cell (1, 0) holds fine rows 3-5: two rows of the dead PMT, one of its z-neighbour
    assert covered[0, 0, 0] == 0 and torch.isclose(covered[0, 1, 0], torch.tensor(1 / 3))
    assert torch.isclose(density[0, 1, 0], torch.tensor(150.0 / 15))


def test_split_grid_is_the_coarse_layout():
    grid = geo.OuterGrid(geo.COARSE_CELL)
    assert grid.shape == geo.OUTER_COARSE_SHAPE
    f = geo.outer_footprint_matrix(geo.COARSE_CELL)
    # every coarse PMT outside the centre patch fills exactly one coarse cell
    local = {int(s): k for k, s in enumerate(geo.outer_ids())}
    coarse = geo.outer_coarse_map()
    for row, col in [(0, 0), (8, 23), (2, 10), (6, 13)]:
        k = local[int(coarse[row, col])]
        assert f[k, row * 24 + col] == 15 and f[k].sum() == 15


def test_uvw_round_trip_and_definition():
    xyz = np.array([[-70.0, 10.0, 5.0], [-80.0, -30.0, -20.0]])
    uvw = geo.xyz_to_uvw(xyz)
    np.testing.assert_allclose(uvw[:, 0], xyz[:, 2])
    np.testing.assert_allclose(uvw[0, 1], 64.97 * np.arctan2(10.0, 70.0))
    np.testing.assert_allclose(uvw[1, 2], np.hypot(80, 30) - 64.97)
    np.testing.assert_allclose(geo.uvw_to_xyz(uvw), xyz, atol=1e-12)
    torch.testing.assert_close(geo.uvw_to_xyz(geo.xyz_to_uvw(torch.tensor(xyz))), torch.tensor(xyz))


def test_inner_sensors_sit_on_the_inner_face():
    uvw = geo.xyz_to_uvw(geo.sensor_positions()[: 4092])
    np.testing.assert_allclose(uvw[:, 2], 0.0, atol=1e-9)


def test_index_arrays_are_read_only():
    with pytest.raises(ValueError):
        geo.inner_map()[0, 0] = 5
