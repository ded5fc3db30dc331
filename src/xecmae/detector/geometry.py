"""Geometry of the MEG II liquid-xenon calorimeter, built from its construction parameters.

Frame: z along the beam (upstream z < 0), y up, the calorimeter on the -x side, target at the
origin. Azimuth everywhere is ``phi = atan2(y, -x)`` (0 at the detector centre, + towards the
top). Lengths in cm, angles in degrees unless a name says ``_rad``. Sensor ids are 0-based.

Everything is pure and cached: the index maps, the outer fine-grid footprints and the
top/bottom neighbour graphs are built once per process. The module imports nothing else of
the project, so every other layer can depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

N_SENSORS = 4760
FACE_NAMES = ("inner", "us", "ds", "outer", "top", "bottom")
RECT_FACES = ("inner", "us", "ds", "outer")
HEX_FACES = ("top", "bottom")

# --- construction parameters (cm, degrees) -------------------------------------------------
INNER_RADIUS = 64.97
INNER_SHAPE = (93, 44)  # phi rows x z columns
INNER_DPHI = 1.349677
INNER_DZ = 1.5097727

OUTER_RADIUS = 106.27
OUTER_COARSE_SHAPE = (9, 24)  # z rows x phi columns
OUTER_DPHI = 5.23
OUTER_DZ = 10.356
CENTRE_SHAPE = (5, 6)  # z (b) x phi (a)
CENTRE_DPHI = 3.48667
CENTRE_DZ = 6.2
OUTER_FINE_SHAPE = (45, 72)
COARSE_CELL = (5, 3)  # fine cells per coarse sensor (z, phi)
CENTRE_CELL = (3, 2)  # fine cells per centre-patch sensor (z, phi)
CENTRE_ORIGIN = (15, 30)  # fine (row, col) of the centre patch's corner

LATERAL_SHAPE = (24, 6)  # phi rows x radial rings
LATERAL_R0, LATERAL_DR = 69.53, 6.684
LATERAL_Z0, LATERAL_DZ = 35.155, 2.3369
LATERAL_TILT = 19.27

HEX_ROW_LENGTHS = (11, 12, 11, 12, 13, 14)
HEX_PLANE_PHI = 62.76
HEX_R0, HEX_DR, HEX_DZ = 68.27, 6.91, 6.12
HEX_NEIGHBOUR_CUTOFF = 8.0

MPPC_AREA = 1.392  # cm^2, four 5.9 mm chips
PMT_RADIUS = 2.25  # cm, photocathode

# --- id ranges -----------------------------------------------------------------------------
INNER_IDS = range(0, 4092)
OUTER_COARSE_IDS = range(4092, 4308)
US_IDS = range(4308, 4452)
DS_IDS = range(4452, 4596)
TOP_IDS = range(4596, 4669)
BOTTOM_IDS = range(4669, 4742)
OUTER_EXTRA_IDS = range(4742, 4760)

# centre patch (b = z row, a = phi column) -> sensor id; the 12 coarse ids that sit in the patch
# take the slots a in {0, 2, 3, 5}, b in {0, 2, 4}, the 18 extras fill the rest in (a, b) order.
_CENTRE_COARSE_A = (0, 2, 3, 5)
_CENTRE_COARSE_B = (0, 2, 4)
_CENTRE_COARSE_PHI_COLS = (10, 11, 12, 13)
_CENTRE_COARSE_Z_ROWS = (3, 4, 5)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# --- index maps ----------------------------------------------------------------------------
@cache
def inner_map() -> np.ndarray:
    """(93, 44) sensor ids of the inner face: row = phi (top first), column = z (upstream first)."""
    return _frozen(np.arange(INNER_IDS.start, INNER_IDS.stop).reshape(INNER_SHAPE))


@cache
def lateral_map(face: str) -> np.ndarray:
    """(24, 6) sensor ids of the US or DS face: row = phi (top first), column = radial ring."""
    start = {"us": US_IDS.start, "ds": DS_IDS.start}[face]
    return _frozen(np.arange(start, start + 144).reshape(LATERAL_SHAPE))


@cache
def outer_coarse_map() -> np.ndarray:
    """(9, 24) coarse outer ids, row = z, column = phi; ids run along z first (id = 4092 + 9 i + j)."""
    return _frozen(np.arange(OUTER_COARSE_IDS.start, OUTER_COARSE_IDS.stop).reshape(24, 9).T.copy())


@cache
def outer_centre_map() -> np.ndarray:
    """(5, 6) ids of the finer centre patch of the outer face, row = z slot b, column = phi slot a."""
    coarse = outer_coarse_map()
    centre = np.full(CENTRE_SHAPE, -1, dtype=np.int64)
    for a, col in zip(_CENTRE_COARSE_A, _CENTRE_COARSE_PHI_COLS, strict=True):
        for b, row in zip(_CENTRE_COARSE_B, _CENTRE_COARSE_Z_ROWS, strict=True):
            centre[b, a] = coarse[row, col]
    extras = iter(OUTER_EXTRA_IDS)
    for a in range(CENTRE_SHAPE[1]):
        for b in range(CENTRE_SHAPE[0]):
            if centre[b, a] < 0:
                centre[b, a] = next(extras)
    return _frozen(centre)


@cache
def outer_ids() -> np.ndarray:
    """(234,) every outer sensor: the 216 coarse ids then the 18 centre extras."""
    return _frozen(np.r_[np.arange(OUTER_COARSE_IDS.start, OUTER_COARSE_IDS.stop),
                         np.arange(OUTER_EXTRA_IDS.start, OUTER_EXTRA_IDS.stop)])


@cache
def outer_fine_map() -> np.ndarray:
    """(45, 72) owner sensor id of every outer fine cell (row = z, column = phi).

    A coarse PMT owns a 5 x 3 block; the centre patch (fine rows 15-29, columns 30-41) is
    re-tiled with 3 x 2 blocks, one per centre-patch PMT, so all 234 outer sensors own a
    rectangle and no cell is shared.
    """
    coarse = outer_coarse_map()
    fine = np.repeat(np.repeat(coarse, COARSE_CELL[0], axis=0), COARSE_CELL[1], axis=1)
    patch = np.repeat(np.repeat(outer_centre_map(), CENTRE_CELL[0], axis=0), CENTRE_CELL[1], axis=1)
    r0, c0 = CENTRE_ORIGIN
    fine[r0:r0 + patch.shape[0], c0:c0 + patch.shape[1]] = patch
    return _frozen(fine)


@cache
def hex_ids(face: str) -> np.ndarray:
    """(73,) ids of the top or bottom face, row by row from the inner radius outwards."""
    ids = {"top": TOP_IDS, "bottom": BOTTOM_IDS}[face]
    return _frozen(np.arange(ids.start, ids.stop))


@cache
def face_of_sensor() -> np.ndarray:
    """(4760,) index into FACE_NAMES of every sensor (the 18 centre extras belong to 'outer')."""
    face = np.empty(N_SENSORS, dtype=np.int64)
    face[INNER_IDS.start:INNER_IDS.stop] = 0
    face[US_IDS.start:US_IDS.stop] = 1
    face[DS_IDS.start:DS_IDS.stop] = 2
    face[outer_ids()] = 3
    face[TOP_IDS.start:TOP_IDS.stop] = 4
    face[BOTTOM_IDS.start:BOTTOM_IDS.stop] = 5
    return _frozen(face)


def face_sensor_ids(face: str) -> np.ndarray:
    """Sorted ids of one face."""
    return np.flatnonzero(face_of_sensor() == FACE_NAMES.index(face))


@cache
def is_mppc() -> np.ndarray:
    """(4760,) True for the inner-face MPPCs, False for the PMTs."""
    return _frozen(face_of_sensor() == 0)


@cache
def sensor_area() -> np.ndarray:
    """(4760,) active area in cm^2: MPPC 1.392, PMT photocathode pi * 2.25^2."""
    return _frozen(np.where(is_mppc(), MPPC_AREA, np.pi * PMT_RADIUS**2))


# --- 3D positions and facing directions ------------------------------------------------------
def _on_cylinder(radius: np.ndarray | float, phi_deg: np.ndarray, z: np.ndarray) -> np.ndarray:
    phi = np.deg2rad(phi_deg)
    radius = np.broadcast_to(radius, np.shape(phi))
    return np.stack([-radius * np.cos(phi), radius * np.sin(phi), np.broadcast_to(z, np.shape(phi))], -1)


def _radial(phi_deg: np.ndarray) -> np.ndarray:
    """Unit vector pointing away from the beam axis at azimuth phi."""
    phi = np.deg2rad(phi_deg)
    return np.stack([-np.cos(phi), np.sin(phi), np.zeros_like(phi)], -1)


@cache
def _sensor_frames() -> tuple[np.ndarray, np.ndarray]:
    pos = np.zeros((N_SENSORS, 3))
    normal = np.zeros((N_SENSORS, 3))

    i, j = np.divmod(np.arange(4092), INNER_SHAPE[1])
    phi = (46 - i) * INNER_DPHI
    pos[INNER_IDS.start:INNER_IDS.stop] = _on_cylinder(INNER_RADIUS, phi, (j - 21.5) * INNER_DZ)
    normal[INNER_IDS.start:INNER_IDS.stop] = _radial(phi)  # into the xenon = outwards

    i, j = np.divmod(np.arange(216), OUTER_COARSE_SHAPE[0])
    phi = (11.5 - i) * OUTER_DPHI
    pos[OUTER_COARSE_IDS.start:OUTER_COARSE_IDS.stop] = _on_cylinder(OUTER_RADIUS, phi, (j - 4) * OUTER_DZ)
    normal[OUTER_COARSE_IDS.start:OUTER_COARSE_IDS.stop] = -_radial(phi)
    b, a = np.indices(CENTRE_SHAPE)
    ids = outer_centre_map().ravel()
    phi = (2.5 - a.ravel()) * CENTRE_DPHI
    pos[ids] = _on_cylinder(OUTER_RADIUS, phi, (b.ravel() - 2) * CENTRE_DZ)
    normal[ids] = -_radial(phi)

    i, k = np.divmod(np.arange(144), LATERAL_SHAPE[1])
    phi = (11.5 - i) * OUTER_DPHI
    radius = LATERAL_R0 + LATERAL_DR * k
    abs_z = LATERAL_Z0 + LATERAL_DZ * k
    tilt = np.deg2rad(LATERAL_TILT)
    for ids_range, sign in ((US_IDS, -1.0), (DS_IDS, 1.0)):
        sl = slice(ids_range.start, ids_range.stop)
        pos[sl] = _on_cylinder(radius, phi, sign * abs_z)
        normal[sl] = np.sin(tilt) * _radial(phi) - sign * np.cos(tilt) * np.array([0.0, 0.0, 1.0])

    row, col = _hex_rows_cols()
    length = np.asarray(HEX_ROW_LENGTHS)[row]
    radius = HEX_R0 + HEX_DR * row
    z = (col - (length - 1) / 2) * HEX_DZ
    for ids_range, sign in ((TOP_IDS, 1.0), (BOTTOM_IDS, -1.0)):
        sl = slice(ids_range.start, ids_range.stop)
        plane = np.full(73, sign * HEX_PLANE_PHI)
        pos[sl] = _on_cylinder(radius, plane, z)
        p = np.deg2rad(plane)
        # into the xenon means towards the detector centre (phi -> 0)
        normal[sl] = -sign * np.stack([np.sin(p), np.cos(p), np.zeros(73)], -1)
    return _frozen(pos), _frozen(normal)


def sensor_positions() -> np.ndarray:
    """(4760, 3) sensor centres in cm."""
    return _sensor_frames()[0]


def sensor_directions() -> np.ndarray:
    """(4760, 3) unit normals pointing from each sensor into the xenon."""
    return _sensor_frames()[1]


# --- top / bottom hexagonal-ish lattice --------------------------------------------------------
@cache
def _hex_rows_cols() -> tuple[np.ndarray, np.ndarray]:
    row = np.repeat(np.arange(len(HEX_ROW_LENGTHS)), HEX_ROW_LENGTHS)
    starts = np.cumsum((0, *HEX_ROW_LENGTHS[:-1]))
    col = np.arange(sum(HEX_ROW_LENGTHS)) - starts[row]
    return _frozen(row), _frozen(col)


@cache
def hex_plane_coords() -> np.ndarray:
    """(73, 2) in-plane (z, r) of the top/bottom PMTs in cm (same for both faces)."""
    row, col = _hex_rows_cols()
    length = np.asarray(HEX_ROW_LENGTHS)[row]
    return _frozen(np.stack([(col - (length - 1) / 2) * HEX_DZ, HEX_R0 + HEX_DR * row], -1))


HEX_EDGE_TYPES = 7  # 0 = self, 1-6 = direction sectors of 60 degrees starting at +z


@dataclass(frozen=True)
class HexGraph:
    """Neighbour graph of the 73 PMTs of one plane.

    ``neighbours[n, t]`` is the local index of node n's neighbour in direction type t
    (0 = itself, 1-6 = the 60-degree sector around angle 60 * (t - 1) in the (z, r) plane),
    or -1 if there is none. A depthwise graph convolution then has one weight per type.
    """

    neighbours: np.ndarray  # (73, 7) int64
    coords: np.ndarray  # (73, 2) cm

    @property
    def edges(self) -> np.ndarray:
        """(E, 3) rows of (source, target, type) for every existing edge, self loops included."""
        target, etype = np.nonzero(self.neighbours >= 0)
        return np.stack([self.neighbours[target, etype], target, etype], -1)


@cache
def hex_graph() -> HexGraph:
    """The position-derived neighbour graph shared by the top and bottom faces."""
    coords = hex_plane_coords()
    delta = coords[None, :, :] - coords[:, None, :]  # (n, m, 2): from n to m
    dist = np.linalg.norm(delta, axis=-1)
    angle = np.degrees(np.arctan2(delta[..., 1], delta[..., 0]))
    sector = 1 + np.round(angle / 60.0).astype(np.int64) % 6
    neighbours = np.full((len(coords), HEX_EDGE_TYPES), -1, dtype=np.int64)
    neighbours[:, 0] = np.arange(len(coords))
    near = (dist < HEX_NEIGHBOUR_CUTOFF) & (dist > 0)
    for n, m in zip(*np.nonzero(near), strict=True):
        t = sector[n, m]
        if neighbours[n, t] >= 0:
            raise RuntimeError(f"hex node {n} has two neighbours in direction sector {t}")
        neighbours[n, t] = m
    return HexGraph(_frozen(neighbours), coords)


# --- outer face: fine grid, footprints and pooling ----------------------------------------------
def outer_grid_shape(pool: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """Shape of the outer grid after average-pooling the 45 x 72 fine grid by ``pool``."""
    rows, cols = OUTER_FINE_SHAPE
    if rows % pool[0] or cols % pool[1]:
        raise ValueError(f"outer pool {tuple(pool)} does not divide the fine grid {OUTER_FINE_SHAPE}")
    return rows // pool[0], cols // pool[1]


@cache
def outer_footprint_matrix(pool: tuple[int, int] = (1, 1)) -> np.ndarray:
    """(234, H*W) number of fine cells of each outer sensor inside each (pooled) grid cell.

    Rows follow ``outer_ids()``. Summing a row gives the sensor's footprint size; with no
    pooling every column has a single 1 (one owner per fine cell).
    """
    shape = outer_grid_shape(pool)
    local = np.full(N_SENSORS, -1, dtype=np.int64)
    local[outer_ids()] = np.arange(len(outer_ids()))
    owner = local[outer_fine_map()]  # (45, 72)
    rows, cols = np.indices(OUTER_FINE_SHAPE)
    cell = (rows // pool[0]) * shape[1] + cols // pool[1]
    matrix = np.zeros((len(outer_ids()), shape[0] * shape[1]))
    np.add.at(matrix, (owner.ravel(), cell.ravel()), 1.0)
    return _frozen(matrix)


class OuterGrid(torch.nn.Module):
    """Moves the 234 outer sensors to the (pooled) outer grid and back, in raw photon units.

    npho is extensive: a sensor's photons are spread evenly over its footprint, so a cell holds a
    photon *density* per fine cell; going back sums a sensor's cells. Time is intensive: copied
    onto the footprint, averaged back. With pooling, a cell averages its valid fine cells only.
    """

    def __init__(self, pool: tuple[int, int] = (1, 1)):
        super().__init__()
        self.shape = outer_grid_shape(tuple(pool))
        matrix = torch.tensor(outer_footprint_matrix(tuple(pool)), dtype=torch.float32)
        self.register_buffer("ids", torch.tensor(outer_ids()), persistent=False)
        self.register_buffer("footprint", matrix, persistent=False)  # (234, cells)
        self.register_buffer("footprint_size", matrix.sum(1), persistent=False)  # (234,)

    def to_grid(self, npho: torch.Tensor, time: torch.Tensor, valid_npho: torch.Tensor,
                valid_time: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 4760) raw values -> npho density, time, valid fraction of each: (B, H, W) each."""
        f = self.footprint.to(npho.dtype)
        vn = valid_npho[:, self.ids].to(npho.dtype)  # (B, 234)
        vt = valid_time[:, self.ids].to(npho.dtype)
        density = torch.where(vn > 0, npho[:, self.ids], 0) / self.footprint_size.to(npho.dtype)
        covered_n = vn @ f  # (B, cells): valid fine cells per cell
        covered_t = vt @ f
        grid_npho = (density * vn) @ f / covered_n.clamp_min(1)
        grid_time = (torch.where(vt > 0, time[:, self.ids], 0) * vt) @ f / covered_t.clamp_min(1)
        cells = f.sum(0)  # fine cells per grid cell
        shape = (-1, *self.shape)
        return (grid_npho.view(shape), grid_time.view(shape),
                (covered_n / cells).view(shape), (covered_t / cells).view(shape))

    def to_sensors(self, npho_density: torch.Tensor, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W) npho density and time -> (B, 234) npho (summed) and time (averaged)."""
        f = self.footprint.to(npho_density.dtype)
        return npho_density.flatten(1) @ f.T, self.footprint_mean(time)

    def footprint_mean(self, values: torch.Tensor) -> torch.Tensor:
        """(B, H, W) -> (B, 234): each sensor's average over its footprint (overlap-weighted when pooled)."""
        f = self.footprint.to(values.dtype)
        return values.flatten(1) @ f.T / self.footprint_size.to(values.dtype)


# --- local coordinates ---------------------------------------------------------------------------
def xyz_to_uvw(xyz):
    """(..., 3) cm -> (u, v, w): u = z, v = 64.97 cm * phi (arc), w = depth beyond the inner face."""
    lib = torch if isinstance(xyz, torch.Tensor) else np
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    v = INNER_RADIUS * lib.arctan2(y, -x)
    w = lib.sqrt(x * x + y * y) - INNER_RADIUS
    return lib.stack([z, v, w], -1)


def uvw_to_xyz(uvw):
    """Inverse of :func:`xyz_to_uvw`."""
    lib = torch if isinstance(uvw, torch.Tensor) else np
    u, v, w = uvw[..., 0], uvw[..., 1], uvw[..., 2]
    phi = v / INNER_RADIUS
    r = w + INNER_RADIUS
    return lib.stack([-r * lib.cos(phi), r * lib.sin(phi), u], -1)


def summary() -> str:
    """A short human-readable table of the faces."""
    counts = np.bincount(face_of_sensor(), minlength=len(FACE_NAMES))
    layout = {
        "inner": f"{INNER_SHAPE[0]} x {INNER_SHAPE[1]} MPPC grid (phi x z), r = {INNER_RADIUS} cm",
        "us": f"{LATERAL_SHAPE[0]} x {LATERAL_SHAPE[1]} PMT (phi x ring), z < 0",
        "ds": f"{LATERAL_SHAPE[0]} x {LATERAL_SHAPE[1]} PMT (phi x ring), z > 0",
        "outer": f"{OUTER_COARSE_SHAPE[0]} x {OUTER_COARSE_SHAPE[1]} coarse PMT (z x phi) + 18 centre PMT, "
                 f"fine grid {OUTER_FINE_SHAPE[0]} x {OUTER_FINE_SHAPE[1]}",
        "top": f"73 PMT in rows {list(HEX_ROW_LENGTHS)}, plane phi = +{HEX_PLANE_PHI} deg",
        "bottom": f"73 PMT in rows {list(HEX_ROW_LENGTHS)}, plane phi = -{HEX_PLANE_PHI} deg",
    }
    lines = [f"{'face':7s} {'sensors':>7s}  layout"]
    lines += [f"{name:7s} {counts[k]:7d}  {layout[name]}" for k, name in enumerate(FACE_NAMES)]
    lines.append(f"{'total':7s} {counts.sum():7d}  ({len(hex_graph().edges) - 73} directed hex edges per plane)")
    return "\n".join(lines)
