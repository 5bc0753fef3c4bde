"""Configuration models, loaded from TOML (``tomllib``), one section per component.

Every model is a frozen dataclass with documented defaults. Loading validates types and names:
an unknown key or a wrong type raises ``ConfigError`` naming the file, the section and the key,
so a typo in a config never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from otf2d.core.errors import ConfigError

T = TypeVar("T")


#: Upper limits of the classification parameters a client may set (beyond them a session would only
#: exhaust the engine's memory or time): far above any 2D classification run.
_UPPER_LIMITS: dict[str, float] = {
    "n_classes": 2000,
    "batch_size_per_class": 100_000,
    "online_em_iterations": 10_000,
    "final_full_iterations": 100,
    "zero_pad_factor": 8,
    "initial_uncertainty_factor": 1e6,
    "noise_anneal_start_iteration": 1_000_000,
    "noise_anneal_iterations": 1_000_000,
    "per_particle_scale_iterations": 1_000_000,
}


@dataclass(frozen=True)
class Class2DParams:
    """The parameters of cryoSPARC's "2D Classification" job, with its defaults.

    ``None`` means "derived": the docstring of each field says from what.
    """

    n_classes: int = 50
    #: ICUF: a posterior temperature dividing every log-likelihood (= a factor on σ²),
    #: T(it) = 1 + (ICUF − 1)·clip(1 − (it − noise_anneal_start_iteration) / noise_anneal_iterations, 0, 1),
    #: ``it`` = online-EM iterations done; 1 turns it off (see otf2d.engine.em.schedule).
    initial_uncertainty_factor: float = 2.0
    #: Highest resolution used internally; sets the Fourier-cropped box.
    max_resolution_angstrom: float = 6.0
    #: Highest resolution used in alignment; ``None`` = ``max_resolution_angstrom``.
    max_alignment_resolution_angstrom: float | None = None
    #: Lowest resolution used in alignment (high-pass against micelles); ``None`` = off.
    min_alignment_resolution_angstrom: float | None = None
    #: Circular mask (inner) diameter; ``None`` = 85% of the box.
    mask_diameter_angstrom: float | None = None
    #: Outer diameter of the soft mask edge; ``None`` = 20% larger than the inner diameter (capped at the box).
    mask_outer_diameter_angstrom: float | None = None
    #: Maximise over poses and shifts (True) or marginalise (False); ``None`` = on unless n_classes <= 20.
    force_max_over_poses: bool | None = None
    online_em_iterations: int = 20
    batch_size_per_class: int = 100
    #: cryoSPARC's default is 1. Three full passes at temperature 1 separate views better at low SNR
    #: (realistic session, seeds 1-3, SNR 0.05: selection F1 0.940 -> 0.952, view spread 53.7 -> 51.5°;
    #: SNR 0.11: junk isolation 0.79 -> 0.85, view spread 37.3 -> 34.7°) for two passes' more time.
    final_full_iterations: int = 3
    zero_pad_factor: int = 2
    #: Fit a least-squares scale per particle, α* = Re⟨X, CA⟩ / ‖CA‖², in every iteration.
    per_particle_scale: bool = False
    #: Fit it in the first N online-EM iterations too (never in a final full pass), even when
    #: ``per_particle_scale`` is off; 0 = never (cryoSPARC, and the default). With the scale a class
    #: is chosen by the shape of its average, not its amplitude, so big blurred classes stop drawing in
    #: other views while the classes form; afterwards noise and junk gather again in low-power classes
    #: of their own, which a scale fitted throughout prevents (junk isolation 0.29). Realistic session
    #: (SNR 0.05, K = 20, seeds 1-3), 10 against 0: view spread 51.5 -> 42.2°, in-plane 54.5 -> 48.9°,
    #: F1 0.952 -> 0.958, junk isolation 0.752 -> 0.706; at SNR 0.11: view spread 34.7 -> 32.8°, in-plane
    #: 35.0 -> 26.9°, junk isolation 0.851 -> 0.939, F1 0.973 -> 0.969. Not the default: on the
    #: phantom sessions of the tests (K = 10-12, SNR 0.1) it lowered junk isolation, 0.73 -> 0.45 on
    #: one seed, and ``otf2d select --auto``'s junk removal with it.
    per_particle_scale_iterations: int = 0
    clamp_solvent: bool = False
    non_negativity: bool = False
    recenter: bool = True
    recenter_threshold: float = 0.2
    align_filaments_vertically: bool = False
    sort_by_size: bool = True
    #: In-plane angular step; ``None`` = RELION's rule 360/ceil(π·diameter/resolution), the count rounded up to even.
    in_plane_step_degrees: float | None = None
    #: Largest shift searched, in Å; ``None`` = 10% of the mask diameter.
    max_shift_angstrom: float | None = None
    #: Iteration where noise annealing starts and how many iterations it takes (cryoSPARC: 2 and 15).
    noise_anneal_start_iteration: int = 2
    noise_anneal_iterations: int = 15
    seed: int = 0
    #: "fp32" or a reduced precision for the inputs of the E-step GEMMs ("bf16", "fp16"), summed in
    #: float32 (on CPUs without bf16 units the rounding is applied and the GEMM runs in float32);
    #: see benchmarks/estep_speed.py.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        positive = {
            "n_classes": self.n_classes,
            "initial_uncertainty_factor": self.initial_uncertainty_factor,
            "max_resolution_angstrom": self.max_resolution_angstrom,
            "batch_size_per_class": self.batch_size_per_class,
            "zero_pad_factor": self.zero_pad_factor,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(None, f"{name} must be > 0, got {value}")
        for name, limit in _UPPER_LIMITS.items():
            if getattr(self, name) > limit:
                raise ConfigError(None, f"{name} must be <= {limit}, got {getattr(self, name)}")
        if self.initial_uncertainty_factor < 1:
            raise ConfigError(None, "initial_uncertainty_factor must be >= 1 (1 = no extra uncertainty)")
        if self.online_em_iterations < 0 or self.final_full_iterations < 0 or self.per_particle_scale_iterations < 0:
            raise ConfigError(None, "iteration counts must be >= 0")
        if not 0 < self.recenter_threshold < 1:
            raise ConfigError(None, f"recenter_threshold must be in (0, 1), got {self.recenter_threshold}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(None, f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        lo, hi = self.min_alignment_resolution_angstrom, self.alignment_resolution_angstrom
        if lo is not None and lo <= hi:
            raise ConfigError(
                None, f"min_alignment_resolution_angstrom ({lo}) must be coarser (larger) than the max ({hi})"
            )

    @property
    def alignment_resolution_angstrom(self) -> float:
        """The maximum alignment resolution in effect."""
        if self.max_alignment_resolution_angstrom is None:
            return self.max_resolution_angstrom
        return self.max_alignment_resolution_angstrom

    @property
    def force_max(self) -> bool:
        """Whether poses and shifts are maximised over (cryoSPARC: off for 20 classes or fewer)."""
        if self.force_max_over_poses is None:
            return self.n_classes > 20
        return self.force_max_over_poses


@dataclass(frozen=True)
class VerdictConfig:
    """Thresholds of the grid verdict and of the monitoring numbers behind it (``otf2d.monitoring.verdict``).

    Fractions are in [0, 1]; a verdict is "pending" below ``min_particles`` classified particles.
    """

    #: Below this many classified particles the verdict is "pending".
    min_particles: int = 2000
    #: Classified particles at which the sample-size part of the confidence reaches 1.
    confident_particles: int = 20000
    #: Junk fraction at or above which the grid is marginal / to be abandoned.
    junk_fraction_marginal: float = 0.4
    junk_fraction_abandon: float = 0.7
    #: Fewer distinct views than this is marginal (a single view is marginal at best).
    min_views: int = 3
    #: Share of the good particles in the largest view at or above which the grid is marginal / abandoned.
    largest_view_share_marginal: float = 0.6
    largest_view_share_abandon: float = 0.85
    #: Good particles wanted; the forecast is the time to reach it at the current good-particle rate.
    target_good_particles: int = 100000
    #: Forecast time to the target beyond which the grid is marginal / abandoned, hours.
    target_hours_marginal: float = 24.0
    target_hours_abandon: float = 72.0
    #: Best good-class resolution worse than this is marginal / abandon, Å.
    resolution_marginal_angstrom: float = 30.0
    resolution_abandon_angstrom: float = 50.0
    #: Trailing window over which particle rates are measured, seconds.
    rate_window_seconds: float = 900.0
    #: Shortest history that gives a rate, seconds.
    min_rate_span_seconds: float = 60.0
    #: Junk score above which a class counts as junk.
    junk_score_threshold: float = 0.5
    #: Rotation-invariant similarity at or above which two classes show the same view.
    same_view_similarity: float = 0.85

    def __post_init__(self) -> None:
        for name in ("min_particles", "confident_particles", "target_good_particles", "min_views"):
            if getattr(self, name) < 1:
                raise ConfigError(None, f"verdict.{name} must be >= 1, got {getattr(self, name)}")
        if self.confident_particles < self.min_particles:
            raise ConfigError(None, "verdict.confident_particles must be >= verdict.min_particles")
        pairs = (
            ("junk_fraction_marginal", "junk_fraction_abandon"),
            ("largest_view_share_marginal", "largest_view_share_abandon"),
            ("target_hours_marginal", "target_hours_abandon"),
            ("resolution_marginal_angstrom", "resolution_abandon_angstrom"),
        )
        for low, high in pairs:
            if not 0 < getattr(self, low) <= getattr(self, high):
                raise ConfigError(None, f"verdict: need 0 < {low} <= {high}")
        for name in ("junk_fraction_abandon", "largest_view_share_abandon", "junk_score_threshold"):
            if getattr(self, name) > 1:
                raise ConfigError(None, f"verdict.{name} is a fraction: must be <= 1, got {getattr(self, name)}")
        if not 0 < self.min_rate_span_seconds <= self.rate_window_seconds:
            raise ConfigError(None, "verdict: need 0 < min_rate_span_seconds <= rate_window_seconds")
        if not -1 <= self.same_view_similarity <= 1:
            raise ConfigError(
                None, f"verdict.same_view_similarity must lie in [-1, 1], got {self.same_view_similarity}"
            )


@dataclass(frozen=True)
class LifecycleConfig:
    """When a session turns idle, when it closes by itself and how long a closed one stays in ``/metrics``.

    A session is *open* while particles arrive, *idle* after ``idle_after_minutes`` without a new
    particle, and *closed* by ``otf2d close`` or after ``close_after_idle_hours`` idle (0: never by
    itself). A closed session keeps its files; its series leave ``/metrics`` ``retain_closed_minutes``
    after it closed (long enough for Prometheus to see it closed and resolve its alerts).
    """

    idle_after_minutes: float = 10.0
    close_after_idle_hours: float = 12.0
    retain_closed_minutes: float = 30.0

    def __post_init__(self) -> None:
        if self.idle_after_minutes <= 0:
            raise ConfigError(None, f"sessions.idle_after_minutes must be > 0, got {self.idle_after_minutes}")
        for name in ("close_after_idle_hours", "retain_closed_minutes"):
            if getattr(self, name) < 0:
                raise ConfigError(None, f"sessions.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class EngineLimits:
    """Limits of the engine's service (``[engine]`` table; flags of ``otf2d engine`` override them)."""

    #: Most sessions the engine holds; creating one more is refused with the reason.
    max_sessions: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.max_sessions <= 100_000:
            raise ConfigError(None, f"engine.max_sessions must be 1 .. 100000, got {self.max_sessions}")


@dataclass(frozen=True)
class Otf2dConfig:
    """A whole configuration file: one section per component (more sections come with them)."""

    classification: Class2DParams = field(default_factory=Class2DParams)
    verdict: VerdictConfig = field(default_factory=VerdictConfig)
    sessions: LifecycleConfig = field(default_factory=LifecycleConfig)
    engine: EngineLimits = field(default_factory=EngineLimits)


#: Largest magnitude of an integer setting (anything larger is a typo or an attack, never a setting).
_INT_LIMIT = 2**31 - 1


def _finite(value: float, where: str) -> float:
    """``value`` as a finite float, or ``ConfigError`` (a 400-digit integer, NaN, infinity)."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(None, f"{where}: {value!r:.40} is not a finite number")
    return number


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` converted to ``annotation`` or raise ``ConfigError``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(None, f"{where}: {value!r} is not one of {options}")
    if annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return _finite(value, where)
    if annotation is int and type(value) is int and not -_INT_LIMIT <= value <= _INT_LIMIT:
        raise ConfigError(None, f"{where}: {value:.6g} is out of range (|value| <= {_INT_LIMIT})")
    if annotation in (int, bool, str) and type(value) is annotation:
        return value
    raise ConfigError(None, f"{where}: expected {getattr(annotation, '__name__', annotation)}, got {value!r}")


def from_mapping(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from a TOML table, validating names and types."""
    if not isinstance(data, dict):
        raise ConfigError(None, f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(None, f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_mapping(hint, value, f"{where}.{name}")  # type: ignore[arg-type]
        else:
            kwargs[name] = _check_type(value, hint, f"{where}.{name}")
    return cls(**kwargs)


def read_toml(path: Path) -> dict[str, Any]:
    """The tables of a TOML file; ``ConfigError`` naming the file when it cannot be read or parsed."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from exc


def load_config(path: str | Path) -> Otf2dConfig:
    """Read a TOML configuration file.

    Raises
    ------
    ConfigError
        If the file cannot be read or parsed, or holds an unknown key or a wrong type;
        the message names the file and the key.
    """
    path = Path(path)
    data = read_toml(path)
    try:
        return from_mapping(Otf2dConfig, data, "config")
    except ConfigError as exc:
        raise ConfigError(path, exc.what) from exc


__all__ = [
    "Class2DParams",
    "EngineLimits",
    "LifecycleConfig",
    "Otf2dConfig",
    "VerdictConfig",
    "from_mapping",
    "load_config",
    "read_toml",
]
