"""The chain: kinematics -> shower -> light transport -> sensor response -> dead channels.

Truth: ``energyTruth`` GeV; ``timeTruth`` ns is the gamma's emission time at the vertex on the
``relative_time`` clock (so it is negative: the vertex precedes the earliest bright sensor by the
flight and optical path, about 3 ns); ``xyzTruth`` the first interaction point, ``uvwTruth`` its
(u, v, w); ``xyzVTX`` the vertex; ``emiVec`` the unit vector vertex -> first interaction;
``emiAng`` (theta from +z, atan2(vy, -vx)) in degrees; ``run``; ``event``.

Reproducibility: the kinematics of block b (BLOCK_EVENTS events) come from
``SeedSequence([tag, seed, run, epoch, b])`` and the sensors of each 64-event sub-block from a
sequence of their own, so event k is the same however a request is split (or spread over
threads). Every realistic component draws from a stream of its own, so switching one off leaves
the others' draws alone, and with every component off the realistic detector is the ideal one
bit for bit. Sampling is vectorised over events and sensors: numpy for the kinematics, torch
float32 on one thread for the per-sensor arithmetic; results are bitwise reproducible for a
given numpy/torch build.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from xecmae.detector import geometry as geo
from xecmae.detector.light import C_LIGHT, FRAME_ORIGIN, PHOTONS_PER_MEV, deposit_light, make_optics
from xecmae.detector.threads import single_thread
from xecmae.errors import UserError
from xecmae.simulate.deadmaps import clustered_dead_mask, dead_mask_from_ids, random_dead_mask
from xecmae.simulate.kinematics import first_interaction, parse_spectrum
from xecmae.simulate.response import detect, ideal_response, realistic_response
from xecmae.simulate.shower import ideal_shower, realistic_shower
from xecmae.simulate.spec import DetectorSpec, detector_spec
from xecmae.simulate.transport import scatter_points

BLOCK_EVENTS = 128  # events whose kinematics come from one seed
SUB_EVENTS = 64  # events simulated together, with their own seed
_SEED_TAG_EVENTS, _SEED_TAG_SENSORS = 0x5EC, 0x5E5
_SEED_TAG_SHOWER, _SEED_TAG_PILEUP = 0x5A0, 0x5A2
PILEUP_SPECTRUM = "background"

BRANCHES: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "npho": (np.dtype(np.float32), (geo.N_SENSORS,)),
    "relative_time": (np.dtype(np.float32), (geo.N_SENSORS,)),
    "energyTruth": (np.dtype(np.float32), ()),
    "timeTruth": (np.dtype(np.float32), ()),
    "uvwTruth": (np.dtype(np.float32), (3,)),
    "xyzTruth": (np.dtype(np.float32), (3,)),
    "xyzVTX": (np.dtype(np.float32), (3,)),
    "emiVec": (np.dtype(np.float32), (3,)),
    "emiAng": (np.dtype(np.float32), (2,)),
    "run": (np.dtype(np.int32), ()),
    "event": (np.dtype(np.int32), ()),
}
"""ROOT branch name -> (dtype, per-event shape); also the keys of every generated dict."""


def empty_events(n: int) -> dict[str, np.ndarray]:
    """Uninitialised arrays for n events, keyed and shaped like :data:`BRANCHES` (for ``fill``)."""
    return {name: np.empty((n, *shape), dtype) for name, (dtype, shape) in BRANCHES.items()}


def as_detector(detector: str | DetectorSpec) -> DetectorSpec:
    """A detector name or spec -> :class:`DetectorSpec`."""
    return detector if isinstance(detector, DetectorSpec) else detector_spec(str(detector))


def _f32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


class EventGenerator:
    """Deterministic source of simulated XEC events.

    Args:
        spectrum: ``signal``, ``flat:EMIN:EMAX`` or ``background`` (see :func:`parse_spectrum`).
        seed: non-negative integer; with ``run`` and ``epoch`` it fixes every event.
        dead_fraction: fraction of dead sensors, drawn once per (seed, run) face by face.
        dead_map: ids (or a (4760,) bool mask) of dead sensors; replaces ``dead_fraction``.
        run: the ``run`` branch; also part of the seed, as a different run is a different sample.
        epoch: folded into the event seeds (a streamed source gives new events every epoch);
            the dead channels and the channel calibration do not depend on it. The channel
            calibration depends on the detector's ``calibration_seed`` and ``run`` only, not
            on ``seed``: two files of one run share it.
        attenuation_length: optional extra light attenuation length in cm (None = none).
        detector: ``realistic`` (default), ``ideal`` or a :class:`DetectorSpec`.
    """

    def __init__(self, spectrum: str = "signal", seed: int = 0, dead_fraction: float = 0.01,
                 dead_map: np.ndarray | Sequence[int] | None = None, run: int = 1, *, epoch: int = 0,
                 attenuation_length: float | None = None, detector: str | DetectorSpec = "realistic"):
        self.spectrum = parse_spectrum(spectrum)
        for name, value in (("seed", seed), ("run", run), ("epoch", epoch)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise UserError(f"{name} must be a non-negative integer, got {value!r}")
        if not (isinstance(dead_fraction, int | float) and 0.0 <= dead_fraction < 1.0):
            raise UserError(f"dead fraction must be in [0, 1), got {dead_fraction!r}")
        if attenuation_length is not None and not attenuation_length > 0:
            raise UserError(f"attenuation length must be positive (cm), got {attenuation_length!r}")
        if run > np.iinfo(np.int32).max:
            raise UserError(f"run {run} does not fit the int32 run branch")
        self.detector = as_detector(detector)
        self.seed, self.run, self.epoch = int(seed), int(run), int(epoch)
        self.attenuation_length = attenuation_length
        spec = self.detector
        if dead_map is not None:
            self.dead = dead_mask_from_ids(dead_map)
            self.dead_fraction = float(self.dead.mean())
        elif spec.has("dead_clusters"):
            self.dead = clustered_dead_mask(float(dead_fraction), self.seed, self.run, spec.board_channels,
                                            spec.board_fraction)
            self.dead_fraction = float(dead_fraction)
        else:
            self.dead = random_dead_mask(float(dead_fraction), self.seed, self.run)
            self.dead_fraction = float(dead_fraction)
        self.dead.setflags(write=False)
        self._dead_ids = torch.from_numpy(np.flatnonzero(self.dead))
        excess = spec.excess_noise if spec.has("excess_noise") else None
        self.response = (realistic_response(spec.calibration_seed, self.run, spec.has("gains"), spec.efficiency_spread,
                                            spec.gain_spread, excess)
                         if spec.has("gains") or excess is not None else ideal_response())
        self._scattering = spec.scattering_length if spec.has("scattering") else None
        self._absorption = spec.absorption_length if spec.has("absorption") else None
        mu = sum(1.0 / length for length in (self._scattering, self._absorption) if length is not None)
        angular = spec.has("angular"), spec.xenon_index, spec.pmt_window_index
        # the pair's deposit (first) gets the optics at its own position, the shower's share their centroid's
        self._direct_optics = make_optics(1.0 / mu if mu > 0 else None, *angular, exact=1)
        self._scattered_optics = make_optics(self._absorption, *angular)

    def __repr__(self) -> str:
        return (f"EventGenerator(spectrum={self.spectrum.name!r}, seed={self.seed}, run={self.run}, "
                f"epoch={self.epoch}, detector={self.detector.label!r}, dead={int(self.dead.sum())} sensors)")

    @property
    def dead_ids(self) -> np.ndarray:
        """Sorted ids of the dead sensors."""
        return np.flatnonzero(self.dead)

    def generate(self, n: int, first_event: int = 0) -> dict[str, np.ndarray]:
        """Events ``first_event .. first_event + n - 1`` as a dict of arrays keyed by branch name.

        npho (n, 4760) float32 photons; relative_time (n, 4760) float32 seconds; 1e10 marks a
        dead channel in both. Event k is the same whatever the split of the request.
        """
        if n < 0 or first_event < 0:
            raise ValueError(f"need n >= 0 and first_event >= 0, got {n}, {first_event}")
        if first_event + n > np.iinfo(np.int32).max:
            raise UserError(f"event number {first_event + n} does not fit the int32 event branch")
        out = empty_events(n)
        self.fill(out, first_event, n)
        return out

    def fill(self, out: dict[str, np.ndarray], first_event: int, n: int, workers: int = 1) -> None:
        """Write events ``first_event .. first_event + n - 1`` into rows 0..n-1 of ``out``, a dict of
        arrays shaped like :meth:`generate`'s (with at least n rows); reusing buffers saves memory.

        ``workers`` > 1 simulates sub-blocks in that many threads; every sub-block has its own
        random streams, so the events are the same.
        """
        pieces = []
        for k in range(first_event // SUB_EVENTS, -(-(first_event + n) // SUB_EVENTS)):
            lo, hi = max(k * SUB_EVENTS, first_event), min((k + 1) * SUB_EVENTS, first_event + n)
            base = k * SUB_EVENTS
            pieces.append((k, slice(lo - first_event, hi - first_event), slice(lo - base, hi - base)))
        kins = {k * SUB_EVENTS // BLOCK_EVENTS: None for k, _, _ in pieces}
        for block in kins:
            kins[block] = self._kinematics(block)
        with single_thread():
            if workers <= 1 or len(pieces) == 1:
                for k, dst, src in pieces:
                    self._sub_block(k, kins[k * SUB_EVENTS // BLOCK_EVENTS], out, dst, src)
                return
            with ThreadPoolExecutor(workers, thread_name_prefix="xecmae-sim") as pool:
                jobs = [pool.submit(self._sub_block, k, kins[k * SUB_EVENTS // BLOCK_EVENTS], out, dst, src)
                        for k, dst, src in pieces]
                for job in jobs:
                    job.result()

    def iter_chunks(self, n: int, chunk_events: int, first_event: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Yield ``n`` events from ``first_event`` in dicts of at most ``chunk_events`` events."""
        for start in range(first_event, first_event + n, chunk_events):
            yield self.generate(min(chunk_events, first_event + n - start), start)

    def mean_light(self, n: int, first_event: int = 0) -> dict[str, np.ndarray]:
        """Expected photons per sensor before photon statistics, for studies and tests.

        {"direct", "scattered", "pileup"}: (n, 4760) float32 photons (before the sensors' PDE and
        gains, after their angular acceptance), and the transport budget of each event in MeV:
        "emitted", "direct_budget", "absorbed", "scattered_budget" (n,).
        """
        parts: dict[str, list[np.ndarray]] = {}
        for k in range(first_event // SUB_EVENTS, -(-(first_event + n) // SUB_EVENTS)):
            block, first = divmod(k * SUB_EVENTS, BLOCK_EVENTS)
            kin = self._kinematics(block)
            ev = slice(first, first + SUB_EVENTS)
            with single_thread():
                light = self._light(kin, ev)
            lo = max(k * SUB_EVENTS, first_event) - k * SUB_EVENTS
            hi = min((k + 1) * SUB_EVENTS, first_event + n) - k * SUB_EVENTS
            direct = light[0].clone()
            for extra in light[2:]:
                if extra is not None:
                    direct.sub_(extra)
            items = {"direct": direct, "scattered": light[2], "pileup": light[3]}
            items.update({f"{key}_budget" if key in ("direct", "scattered") else key: v[ev]
                          for key, v in kin["budget"].items()})
            for key, value in items.items():
                value = np.zeros((SUB_EVENTS, geo.N_SENSORS), np.float32) if value is None else value
                parts.setdefault(key, []).append(np.asarray(value)[lo:hi])
        return {key: np.concatenate(values) for key, values in parts.items()}

    # -- blocks ---------------------------------------------------------------------------------
    def _seeds(self, tag: int, *more: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([tag, self.seed, self.run, self.epoch, *more]))

    def _kinematics(self, block: int) -> dict:
        """Kinematics, deposits, scattering points and truth of one block of BLOCK_EVENTS events
        (the last block is cached)."""
        cached = getattr(self, "_cached_block", None)
        if cached is not None and cached[0] == block:
            return cached[1]
        spec, n = self.detector, BLOCK_EVENTS
        rng = self._seeds(_SEED_TAG_EVENTS, block)
        kin = first_interaction(self.spectrum, rng, n)
        p, direction = kin["first"], kin["direction"]
        if spec.has("shower"):
            deposits, energy, _ = realistic_shower(self._seeds(_SEED_TAG_SHOWER, block), spec, kin["energy"],
                                                   direction, p)
        else:
            deposits, energy = ideal_shower(rng, kin["energy"], direction, p)
        points, scattered, kin["budget"] = scatter_points(deposits, energy, direction, spec.scatter_rays,
                                                          self._scattering, self._absorption)
        kin["truth"] = {
            "energyTruth": (kin["energy"] * 1e-3).astype(np.float32),
            "uvwTruth": geo.xyz_to_uvw(p).astype(np.float32),
            "xyzTruth": p.astype(np.float32),
            "xyzVTX": kin["vertex"].astype(np.float32),
            "emiVec": direction.astype(np.float32),
            "emiAng": np.stack([np.degrees(np.arccos(np.clip(direction[:, 2], -1, 1))),
                                np.degrees(np.arctan2(direction[:, 1], -direction[:, 0]))], 1).astype(np.float32),
            "run": np.full(n, self.run, np.int32),
            "event": np.arange(block * n, (block + 1) * n, dtype=np.int32),
        }
        kin["pos"] = _f32(deposits - FRAME_ORIGIN)  # (B, K, 3)
        kin["weight"] = _f32(energy * (0.5 * PHOTONS_PER_MEV))
        kin["t_conv_ns"] = _f32(np.linalg.norm(p - kin["vertex"], axis=1) / C_LIGHT)
        if self._scattering is not None:
            kin["scatter_pos"] = _f32(points - FRAME_ORIGIN)
            kin["scatter_weight"] = _f32(scattered * (0.5 * PHOTONS_PER_MEV))
        if spec.has("pileup"):
            kin["pileup"] = self._pileup(block)
        self._cached_block = (block, kin)
        return kin

    def _pileup(self, block: int) -> dict[str, torch.Tensor]:
        """A second gamma (falling spectrum, ideal shower) for a share of the block's events, at a
        time offset uniform in +-pileup_window ns (zero weight where there is none)."""
        spec, n = self.detector, BLOCK_EVENTS
        rng = self._seeds(_SEED_TAG_PILEUP, block)
        kin = first_interaction(parse_spectrum(PILEUP_SPECTRUM), rng, n)
        deposits, energy = ideal_shower(rng, kin["energy"], kin["direction"], kin["first"])
        present = rng.random(n) < spec.pileup_probability
        offset = rng.uniform(-spec.pileup_window, spec.pileup_window, n)
        t_conv = np.linalg.norm(kin["first"] - kin["vertex"], axis=1) / C_LIGHT + offset
        weight = energy * present[:, None] * (0.5 * PHOTONS_PER_MEV)
        return {"pos": _f32(deposits - FRAME_ORIGIN), "weight": _f32(weight), "t_conv_ns": _f32(t_conv)}

    def _light(self, kin: dict, ev: slice):
        """(photons, t_opt, scattered, pileup) of the events ``ev`` of a block: (B, S) tensors (the
        last two None when off); photons includes the scattered and pile-up light."""
        optics = self._direct_optics
        photons, t_opt = deposit_light(kin["pos"][ev], kin["weight"][ev], kin["t_conv_ns"][ev],
                                       self.attenuation_length, optics)
        scattered = pileup = None
        if "scatter_pos" in kin:
            scattered, _ = deposit_light(kin["scatter_pos"][ev], kin["scatter_weight"][ev], None,
                                         self.attenuation_length, self._scattered_optics)
            direct = photons.clone() if self.detector.has("pileup") else None
            photons.add_(scattered)
        if "pileup" in kin:
            pu = kin["pileup"]
            pileup, t_pu = deposit_light(pu["pos"][ev], pu["weight"][ev], pu["t_conv_ns"][ev],
                                         self.attenuation_length, optics)
            main = photons if scattered is None else direct
            t_opt = torch.where(pileup > main, t_pu, t_opt)
            photons.add_(pileup)
        return photons, t_opt, scattered, pileup

    def _sub_block(self, k: int, kin: dict, out: dict[str, np.ndarray], dst: slice, src: slice) -> None:
        """Simulate the sensors of sub-block k (SUB_EVENTS events of the block whose kinematics
        are ``kin``, with its own random streams) and copy its events ``src`` (local indices)
        into ``out`` rows ``dst``."""
        block, first = divmod(k * SUB_EVENTS, BLOCK_EVENTS)
        ev = slice(first, first + SUB_EVENTS)
        rng = self._seeds(_SEED_TAG_SENSORS, block, first)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        whole = src == slice(0, SUB_EVENTS)
        npho = torch.from_numpy(out["npho"][dst]) if whole else torch.empty(SUB_EVENTS, geo.N_SENSORS)
        rel = torch.from_numpy(out["relative_time"][dst]) if whole else torch.empty(SUB_EVENTS, geo.N_SENSORS)
        photons, t_opt, _, _ = self._light(kin, ev)
        t_ref = detect(photons, t_opt, rng, gen, npho, rel, self._dead_ids, self.response)
        if not whole:
            out["npho"][dst] = npho[src].numpy()
            out["relative_time"][dst] = rel[src].numpy()
        for name, values in kin["truth"].items():
            out[name][dst] = values[ev][src]
        out["timeTruth"][dst] = -t_ref.numpy()[src]
