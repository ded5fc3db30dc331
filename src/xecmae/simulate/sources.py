"""``sim://`` sources: the generator as an endless stream for the data pipeline, no files at all.

``data.train_path: "sim://signal?seed=1&events=100000"``: ``events`` per epoch, new events every
epoch (the epoch is part of the seed); ``&detector=ideal`` for the ideal response,
``&disable=scattering,gains`` / ``&enable=pileup`` to switch components of the realistic one,
and any detector parameter by name (``&scattering_length=30``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from xecmae.data.sources import SIM_SCHEME
from xecmae.errors import UserError
from xecmae.simulate.generator import EventGenerator
from xecmae.simulate.kinematics import parse_spectrum
from xecmae.simulate.spec import PARAMETERS, DetectorSpec, detector_spec, parse_parameter

DEFAULT_EPOCH_EVENTS = 100_000


@dataclass(frozen=True)
class SimSpec:
    """A simulated source, as written in a ``sim://`` URL (see :func:`parse_sim_url`)."""

    spectrum: str = "signal"
    seed: int = 0
    events: int = DEFAULT_EPOCH_EVENTS
    dead_fraction: float = 0.01
    dead_map: str | None = None
    run: int = 1
    attenuation_length: float | None = None
    detector: str = "realistic"
    disable: str = ""
    enable: str = ""
    params: tuple[tuple[str, float | int], ...] = ()

    def detector_spec(self) -> DetectorSpec:
        """The detector response this source simulates."""
        return detector_spec(self.detector, self.disable, self.enable, **dict(self.params))

    def generator(self, epoch: int = 0) -> EventGenerator:
        """The event generator of one epoch (the dead channels are the same in every epoch)."""
        from xecmae.data.deadchannels import dead_channels

        dead = dead_channels(self.dead_map, run=self.run) if self.dead_map else None
        return EventGenerator(self.spectrum, seed=self.seed, dead_fraction=self.dead_fraction, dead_map=dead,
                              run=self.run, epoch=epoch, attenuation_length=self.attenuation_length,
                              detector=self.detector_spec())

    @property
    def url(self) -> str:
        """The canonical URL of this source."""
        query = [f"seed={self.seed}", f"events={self.events}", f"run={self.run}"]
        query.append(f"dead_map={self.dead_map}" if self.dead_map else f"dead_fraction={self.dead_fraction:g}")
        if self.attenuation_length is not None:
            query.append(f"attenuation_length={self.attenuation_length:g}")
        if self.detector != "realistic":
            query.append(f"detector={self.detector}")
        query += [f"{key}={value}" for key, value in (("disable", self.disable), ("enable", self.enable)) if value]
        query += [f"{key}={value}" if isinstance(value, int) else f"{key}={value:g}" for key, value in self.params]
        return f"{SIM_SCHEME}{parse_spectrum(self.spectrum).name}?{'&'.join(query)}"


_SIM_KEYS = {"seed": int, "events": int, "dead_fraction": float, "dead_map": str, "run": int,
             "attenuation_length": float, "detector": str, "disable": str, "enable": str}


def parse_sim_url(url: str) -> SimSpec:
    """``sim://SPECTRUM?key=value&...`` -> :class:`SimSpec`; any problem is a :class:`UserError`.

    SPECTRUM is ``signal`` (default when empty), ``flat:EMIN:EMAX`` (MeV) or ``background``.
    Keys: ``seed`` (default 0), ``events`` per epoch (default 100000), ``dead_fraction``
    (default 0.01) or ``dead_map`` (a dead-channel source of :mod:`xecmae.data.deadchannels`: a
    text file of sensor ids, a run table, ``FILE.root:TREE/BRANCH``, ``clustered:F[:SEED]``), ``run`` (default 1),
    ``attenuation_length`` (cm, default none), ``detector`` (realistic, the default, or ideal),
    ``disable`` / ``enable`` (comma-separated components) and the detector parameters by name.
    Examples: ``sim://signal?seed=1&events=100000``, ``sim://flat:15:60?seed=3&detector=ideal``.
    """
    text = str(url).strip()
    if not text.startswith(SIM_SCHEME):
        raise UserError(f"{url!r} is not a sim:// source (e.g. sim://signal?seed=1)")
    parts = urlsplit(text)
    spectrum_text = (parts.netloc + parts.path).strip("/") or "signal"
    if parts.fragment:
        raise UserError(f"{url}: unexpected '#{parts.fragment}'")
    spectrum = parse_spectrum(spectrum_text).name
    values: dict[str, object] = {}
    params: dict[str, float | int] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise UserError(f"{url}: the query must be key=value pairs joined by '&'") from None
    for key, raw in pairs:
        if key in values or key in params:
            raise UserError(f"{url}: {key!r} is given twice")
        if key in PARAMETERS:
            params.update([parse_parameter(f"{key}={raw}")])
            continue
        if key not in _SIM_KEYS:
            raise UserError(f"{url}: unknown key {key!r} (known: {', '.join(_SIM_KEYS)} and the detector "
                            f"parameters {', '.join(PARAMETERS)})")
        try:
            values[key] = _SIM_KEYS[key](raw)
        except ValueError:
            raise UserError(f"{url}: {key}={raw!r} is not a valid {_SIM_KEYS[key].__name__}") from None
    spec = SimSpec(spectrum=spectrum, params=tuple(params.items()), **values)  # type: ignore[arg-type]
    if not 0 < spec.events <= np.iinfo(np.int32).max:
        raise UserError(f"{url}: events must be positive and fit an int32, got {spec.events}")
    if spec.dead_map is not None and "dead_fraction" in values:
        raise UserError(f"{url}: give dead_fraction or dead_map, not both")
    spec.generator()  # validates seed, run, detector, dead settings and the dead map now, not in a worker
    return spec


def sim_chunks(spec: SimSpec, shard: int, num_shards: int, chunksize: int, epoch: int = 0
               ) -> Iterator[dict[str, np.ndarray]]:
    """Yield this shard's events of one epoch in dicts of at most ``chunksize`` events.

    The epoch's ``spec.events`` events are cut into ``num_shards`` contiguous shares (sizes
    differ by at most one), so the shards partition the epoch exactly. Another epoch draws new
    events (the epoch is part of the seed); event numbers restart at 0 in every epoch.
    """
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in 0..{num_shards - 1}")
    if chunksize <= 0:
        raise ValueError(f"chunksize must be positive, got {chunksize}")
    generator = spec.generator(epoch)
    start = shard * spec.events // num_shards
    stop = (shard + 1) * spec.events // num_shards
    yield from generator.iter_chunks(stop - start, chunksize, first_event=start)
