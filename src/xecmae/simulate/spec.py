"""The detector response of the generator: one typed spec, named components, one parameter table.

``ideal`` is the response the generator always had: point deposits seen through the solid-angle
model, Poisson photoelectrons and baseline noise. ``realistic`` (the default) adds the effects a
real run has, each a component that can be switched off alone:

============== ===================================================================================
component      what it does
============== ===================================================================================
shower         many deposits with fluctuating shares, a Moliere lateral profile, bremsstrahlung
               satellites converting several cm away, an event-by-event leakage
scattering     Rayleigh scattering: direct light removed by exp(-d / lambda_R), re-emitted
               isotropically from scattering points of a fixed quadrature around the shower
absorption     absorption of direct and scattered light, exp(-d / lambda_abs)
angular        sensor angular acceptance: MPPC Fresnel (xenon -> silicon), PMT quartz window
gains          per-channel efficiency and gain miscalibration, fixed per (calibration_seed, run)
excess_noise   excess noise factor on the photoelectron variance (crosstalk, afterpulsing)
dead_clusters  dead channels in whole readout boards as well as scattered ones
pileup         a second, lower-energy gamma overlaid in a time window (off by default)
============== ===================================================================================

Parameters (:class:`DetectorSpec` fields; lengths cm, times ns, energies MeV):

===================== ======= ============================================= =====================
parameter             value   source                                        literature range
===================== ======= ============================================= =====================
scattering_length     45      Rayleigh length measured in the MEG detector  30-50 cm
absorption_length     300     "a metre or more after purification"          >= 100 cm
scatter_rays          4       directions of the scattering quadrature       4 or 6 (numerics)
xenon_index           1.69    LXe index for interface optics, 178 nm        1.61-1.69
pmt_window_index      1.60    fused quartz at 178 nm                        1.57-1.62
efficiency_spread     0.05    per-channel PDE miscalibration (sigma)        0.03-0.05
gain_spread           0.05    per-channel gain miscalibration (sigma)       0.03-0.05 (+-5% used)
calibration_seed      1       which detector: with the run it fixes the     any integer >= 0
                              channel calibration (not the event seed)
excess_noise          1.2     MPPC crosstalk and afterpulsing (ENF)         1.1-1.3
radiation_length      2.87    X0 of LXe (PDG: 8.48 g/cm^2 at 2.95 g/cm^3)    2.77-2.87 cm
moliere_radius        5.22    LXe Moliere radius (PDG)                      4.1-5.2 cm
profile_shape         1.7     a of t^(a-1) e^(-b t), t in X0                1.4-2
profile_rate          0.5     b of the same profile, 1/X0                   about 0.5
shower_deposits       6       deposits beyond the first interaction         -
share_shape           2.0     Gamma shape of the deposits' energy shares    - (effective)
brems_mean            1.0     satellite photons per event (Poisson mean)    - (effective)
brems_energy          3.0     mean satellite energy, exponential            "a few MeV"
brems_path            6.0     mean path before a satellite converts         about 6 cm
leakage_mean          0.01    mean extra leaking fraction, exponential      - (effective)
board_channels        16      channels of one readout board                 16 (WaveDREAM)
board_fraction        0.5     share of the dead channels in whole boards    -
pileup_probability    0.1     events with a pile-up gamma (when enabled)    rate dependent
pileup_window         100     pile-up time offset uniform in +-window       -
===================== ======= ============================================= =====================
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from xecmae.errors import UserError

DETECTORS = ("realistic", "ideal")
COMPONENTS = ("shower", "scattering", "absorption", "angular", "gains", "excess_noise", "dead_clusters", "pileup")
DEFAULT_OFF = frozenset({"pileup"})
_LENGTHS = ("scattering_length", "absorption_length", "radiation_length", "moliere_radius", "brems_path",
            "brems_energy", "pileup_window", "profile_rate", "profile_shape", "share_shape")
_FRACTIONS = ("efficiency_spread", "gain_spread", "leakage_mean", "board_fraction", "pileup_probability")
_COUNTS = ("scatter_rays", "shower_deposits", "board_channels")
_INTEGERS = (*_COUNTS, "calibration_seed")


@dataclass(frozen=True)
class DetectorSpec:
    """Which detector effects the generator simulates, and with which parameters (see the module table)."""

    name: str = "realistic"
    components: frozenset[str] = field(default_factory=lambda: frozenset(COMPONENTS) - DEFAULT_OFF)
    scattering_length: float = 45.0
    absorption_length: float = 300.0
    scatter_rays: int = 4
    xenon_index: float = 1.69
    pmt_window_index: float = 1.60
    efficiency_spread: float = 0.05
    gain_spread: float = 0.05
    calibration_seed: int = 1
    excess_noise: float = 1.2
    radiation_length: float = 2.87
    moliere_radius: float = 5.22
    profile_shape: float = 1.7
    profile_rate: float = 0.5
    shower_deposits: int = 6
    share_shape: float = 2.0
    brems_mean: float = 1.0
    brems_energy: float = 3.0
    brems_path: float = 6.0
    leakage_mean: float = 0.01
    board_channels: int = 16
    board_fraction: float = 0.5
    pileup_probability: float = 0.1
    pileup_window: float = 100.0

    def __post_init__(self) -> None:
        if self.name not in DETECTORS:
            raise UserError(f"unknown detector {self.name!r}: use one of {', '.join(DETECTORS)}")
        unknown = sorted(set(self.components) - set(COMPONENTS))
        if unknown:
            raise UserError(f"unknown detector component {unknown[0]!r}: use any of {', '.join(COMPONENTS)}")
        if self.name == "ideal" and self.components:
            raise UserError("the ideal detector has no components; use --detector realistic to enable "
                            + ", ".join(sorted(self.components)))
        for key in _LENGTHS:
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise UserError(f"detector parameter {key}={value!r}: must be a positive number")
        for key in _FRACTIONS:
            value = getattr(self, key)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise UserError(f"detector parameter {key}={value!r}: must be a fraction in 0-1")
        for key in _COUNTS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"detector parameter {key}={value!r}: must be a whole number >= 1")
        seed = self.calibration_seed
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UserError(f"detector parameter calibration_seed={seed!r}: must be a whole number >= 0")
        if self.scatter_rays not in (4, 6):
            raise UserError(f"detector parameter scatter_rays={self.scatter_rays!r}: must be 4 or 6")
        if not (math.isfinite(self.excess_noise) and self.excess_noise >= 1.0):
            raise UserError(f"detector parameter excess_noise={self.excess_noise!r}: must be >= 1")
        if not (math.isfinite(self.brems_mean) and self.brems_mean >= 0):
            raise UserError(f"detector parameter brems_mean={self.brems_mean!r}: must be >= 0")
        for key in ("xenon_index", "pmt_window_index"):
            if not getattr(self, key) >= 1.0:
                raise UserError(f"detector parameter {key}={getattr(self, key)!r}: a refractive index must be >= 1")

    def has(self, component: str) -> bool:
        """True if ``component`` (one of COMPONENTS) is simulated."""
        return component in self.components

    @property
    def label(self) -> str:
        """``ideal``, ``realistic`` or ``realistic(-scattering,+pileup)``: what a log line needs."""
        if self.name == "ideal":
            return "ideal"
        default = frozenset(COMPONENTS) - DEFAULT_OFF
        changes = [f"-{c}" for c in COMPONENTS if c in default - self.components]
        changes += [f"+{c}" for c in COMPONENTS if c in self.components - default]
        return f"realistic({','.join(changes)})" if changes else "realistic"


PARAMETERS = tuple(f.name for f in dataclasses.fields(DetectorSpec) if f.name not in ("name", "components"))


def parse_components(text: str | None) -> tuple[str, ...]:
    """``"scattering,gains"`` -> ('scattering', 'gains'); an unknown name is a :class:`UserError`."""
    names = tuple(part.strip().lower() for part in (text or "").split(",") if part.strip())
    for name in names:
        if name not in COMPONENTS:
            raise UserError(f"unknown detector component {name!r}: use any of {', '.join(COMPONENTS)}")
    return names


def parse_parameter(text: str) -> tuple[str, float | int]:
    """``"scattering_length=30"`` -> ('scattering_length', 30.0); bad names or values are a :class:`UserError`."""
    key, sep, raw = str(text).partition("=")
    key = key.strip()
    if not sep or key not in PARAMETERS:
        raise UserError(f"detector parameter {text!r}: use NAME=VALUE with NAME one of {', '.join(PARAMETERS)}")
    kind = int if key in _INTEGERS else float
    try:
        return key, kind(raw)
    except ValueError:
        raise UserError(f"detector parameter {key}={raw!r}: not a valid {kind.__name__}") from None


def detector_spec(name: str = "realistic", disable: str | tuple[str, ...] | None = None,
                  enable: str | tuple[str, ...] | None = None, **params) -> DetectorSpec:
    """Build a :class:`DetectorSpec` from what a user wrote: a detector name, components to switch
    off or on (comma-separated or tuples) and parameter overrides."""
    name = str(name).strip().lower()
    if name not in DETECTORS:
        raise UserError(f"unknown detector {name!r}: use one of {', '.join(DETECTORS)}")
    off = parse_components(disable) if isinstance(disable, str | None) else parse_components(",".join(disable))
    on = parse_components(enable) if isinstance(enable, str | None) else parse_components(",".join(enable))
    both = sorted(set(off) & set(on))
    if both:
        raise UserError(f"detector component {both[0]!r} is both enabled and disabled")
    if name == "ideal":
        if on:
            raise UserError(f"the ideal detector has no components to enable ({', '.join(on)}); "
                            "use --detector realistic")
        return DetectorSpec(name="ideal", components=frozenset(), **params)
    components = (frozenset(COMPONENTS) - DEFAULT_OFF - set(off)) | set(on)
    return DetectorSpec(name="realistic", components=frozenset(components), **params)


IDEAL = DetectorSpec(name="ideal", components=frozenset())
REALISTIC = DetectorSpec()
