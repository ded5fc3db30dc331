"""The built-in event generator: physically grounded XEC events, as arrays, ROOT files or a stream.

One package per part of the chain: :mod:`~xecmae.simulate.kinematics` (the gamma and its first
interaction), :mod:`~xecmae.simulate.shower` (energy deposits), :mod:`~xecmae.simulate.transport`
(scattering and absorption), :mod:`~xecmae.simulate.response` (photoelectrons, gains, noise,
time), :mod:`~xecmae.simulate.deadmaps`, :mod:`~xecmae.simulate.generator` (the chain),
:mod:`~xecmae.simulate.files` (ROOT) and :mod:`~xecmae.simulate.sources` (``sim://``). The
detector response is a :class:`~xecmae.simulate.spec.DetectorSpec`: ``realistic`` (default) or
``ideal``; the light model both share with the baselines lives in :mod:`xecmae.detector.light`.

Three ways out: :meth:`EventGenerator.generate` (arrays), :func:`write_root` (TTrees, also
``xecmae simulate``) and a ``sim://`` source for the data pipeline (:func:`parse_sim_url`,
:func:`sim_chunks`).
"""

from xecmae.data.rootio import COMPRESSIONS
from xecmae.detector.light import OPTICAL_SPEED, PHOTONS_PER_MEV, expected_photons, in_xenon
from xecmae.simulate.deadmaps import (
    DEAD_RATE_AT_ONE_PERCENT,
    clustered_dead_mask,
    dead_mask_from_ids,
    random_dead_mask,
)
from xecmae.simulate.files import check_writable, output_paths, write_root
from xecmae.simulate.generator import BLOCK_EVENTS, BRANCHES, EventGenerator, empty_events
from xecmae.simulate.kinematics import COS_THETA_MAX, PHI_MAX, SIGNAL_ENERGY, Spectrum, parse_spectrum
from xecmae.simulate.poisson import sample_poisson
from xecmae.simulate.response import PDE_MPPC, PDE_PMT
from xecmae.simulate.sources import DEFAULT_EPOCH_EVENTS, SimSpec, parse_sim_url, sim_chunks
from xecmae.simulate.spec import COMPONENTS, DETECTORS, DetectorSpec, detector_spec

__all__ = [
    "BLOCK_EVENTS", "BRANCHES", "COMPONENTS", "COMPRESSIONS", "COS_THETA_MAX", "DEAD_RATE_AT_ONE_PERCENT",
    "DEFAULT_EPOCH_EVENTS", "DETECTORS", "OPTICAL_SPEED", "PDE_MPPC", "PDE_PMT", "PHI_MAX", "PHOTONS_PER_MEV",
    "SIGNAL_ENERGY", "DetectorSpec", "EventGenerator", "SimSpec", "Spectrum", "check_writable",
    "clustered_dead_mask", "dead_mask_from_ids", "detector_spec", "empty_events", "expected_photons", "in_xenon",
    "output_paths", "parse_sim_url", "parse_spectrum", "random_dead_mask", "sample_poisson",
    "sim_chunks", "write_root",
]
