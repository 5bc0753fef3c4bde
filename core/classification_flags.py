"""The one table of classification flags: every cryoSPARC "2D Classification" parameter as a flag.

Shared by ``otf2d classify`` and ``otf2d engine`` (the classification defaults of new sessions): each
field of :class:`~otf2d.core.config.Class2DParams` has one flag here (``--force-max`` / ``--marginalise``
share one field), with cryoSPARC's default in its help, and is also a key of the config's
``[classification]`` table. :func:`params_from_args`: cryoSPARC's defaults, then ``--config``, then the
flags given.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from otf2d.core.config import Class2DParams, load_config

_DEFAULTS = Class2DParams()


@dataclass(frozen=True)
class ParamFlag:
    """One command-line flag of a ``Class2DParams`` field."""

    field: str
    flags: tuple[str, ...]
    help: str
    type: Callable[[str], Any] = str
    metavar: str | None = None
    boolean: bool = False


def _default(name: str) -> Any:
    return getattr(_DEFAULTS, name)


#: Every field of ``Class2DParams`` and its flag (``--force-max``/``--marginalise`` share one field).
PARAM_FLAGS: tuple[ParamFlag, ...] = (
    ParamFlag("n_classes", ("--classes", "-K"), "number of classes", int, "K"),
    ParamFlag(
        "initial_uncertainty_factor",
        ("--icuf",),
        "initial classification uncertainty factor: posterior temperature at the start, annealed to 1",
        float,
        "F",
    ),
    ParamFlag(
        "max_resolution_angstrom", ("--max-res",), "maximum resolution used (sets the internal box), A", float, "A"
    ),
    ParamFlag(
        "max_alignment_resolution_angstrom",
        ("--max-align-res",),
        "maximum alignment resolution, A (default: --max-res)",
        float,
        "A",
    ),
    ParamFlag(
        "min_alignment_resolution_angstrom",
        ("--min-align-res",),
        "minimum alignment resolution, A, against micelles (default: off)",
        float,
        "A",
    ),
    ParamFlag(
        "mask_diameter_angstrom",
        ("--mask-diameter",),
        "circular mask diameter, A (default: 85%% of the box)",
        float,
        "A",
    ),
    ParamFlag(
        "mask_outer_diameter_angstrom",
        ("--mask-outer-diameter",),
        "outer diameter of the soft mask edge, A (default: 1.2 x --mask-diameter, at most the box)",
        float,
        "A",
    ),
    ParamFlag("online_em_iterations", ("--online-em-iterations",), "number of online-EM iterations", int, "N"),
    ParamFlag("batch_size_per_class", ("--batch-per-class",), "online-EM batch size per class", int, "N"),
    ParamFlag(
        "final_full_iterations",
        ("--final-full-iterations",),
        "number of final full EM passes (cryoSPARC's default is 1; 3 separate views better at low SNR)",
        int,
        "N",
    ),
    ParamFlag("zero_pad_factor", ("--zero-pad",), "2D zero-padding factor", int, "F"),
    ParamFlag("per_particle_scale", ("--per-particle-scale",), "fit a scale per particle", boolean=True),
    ParamFlag(
        "per_particle_scale_iterations",
        ("--per-particle-scale-iterations",),
        "fit a scale per particle in the first N online-EM iterations only: classes are chosen by shape while "
        "they form, then noise and junk gather in their own classes (0 = never, as cryoSPARC)",
        int,
        "N",
    ),
    ParamFlag("clamp_solvent", ("--clamp-solvent",), "zero the classes outside the mask", boolean=True),
    ParamFlag("non_negativity", ("--non-negativity",), "no negative density in the classes", boolean=True),
    ParamFlag("recenter", ("--recenter",), "re-centre classes on their centre of mass", boolean=True),
    ParamFlag(
        "recenter_threshold",
        ("--recenter-threshold",),
        "re-centring uses pixels above this fraction of the class maximum",
        float,
        "F",
    ),
    ParamFlag(
        "align_filaments_vertically",
        ("--align-filaments-vertically",),
        "turn elongated classes upright",
        boolean=True,
    ),
    ParamFlag("sort_by_size", ("--sort",), "number classes by size, largest first", boolean=True),
    ParamFlag(
        "in_plane_step_degrees",
        ("--in-plane-step",),
        "in-plane angular step, degrees (default: RELION's rule 360/ceil(pi x diameter / resolution), the count "
        "rounded up to even so that the coarse pass of the pose search takes every other angle)",
        float,
        "DEG",
    ),
    ParamFlag(
        "max_shift_angstrom", ("--max-shift",), "largest shift searched, A (default: 10%% of the mask)", float, "A"
    ),
    ParamFlag(
        "noise_anneal_start_iteration",
        ("--noise-anneal-start",),
        "online-EM iteration where the ICUF annealing starts",
        int,
        "N",
    ),
    ParamFlag(
        "noise_anneal_iterations", ("--noise-anneal-iterations",), "iterations the ICUF annealing takes", int, "N"
    ),
    ParamFlag("seed", ("--seed",), "random seed (same seed, same result on the CPU)", int, "N"),
)

#: The field set by ``--force-max`` / ``--marginalise``.
FORCE_MAX_FIELD = "force_max_over_poses"
#: The field set by ``--precision``.
PRECISION_FIELD = "precision"


def _help_default(f: ParamFlag) -> str:
    value = _default(f.field)
    if value is None:
        return f.help  # the help text says what it is derived from
    if f.boolean:
        return f"{f.help} (default: {'on' if value else 'off'})"
    return f"{f.help} (default: {value})"


def add_classification_args(parser: argparse.ArgumentParser, title: str) -> None:
    """One argument group ``title`` with a flag for every classification parameter (defaults in the help)."""
    cls = parser.add_argument_group(title)
    for f in PARAM_FLAGS:
        if f.boolean:
            cls.add_argument(
                *f.flags, dest=f.field, action=argparse.BooleanOptionalAction, default=None, help=_help_default(f)
            )
        else:
            cls.add_argument(
                *f.flags, dest=f.field, type=f.type, metavar=f.metavar, default=None, help=_help_default(f)
            )
    poses = cls.add_mutually_exclusive_group()
    poses.add_argument(
        "--force-max",
        dest=FORCE_MAX_FIELD,
        action="store_const",
        const=True,
        default=None,
        help="maximise over poses and shifts (default: on when --classes > 20)",
    )
    poses.add_argument(
        "--marginalise",
        dest=FORCE_MAX_FIELD,
        action="store_const",
        const=False,
        help="marginalise over poses and shifts (default: on when --classes <= 20)",
    )
    cls.add_argument(
        "--precision",
        dest=PRECISION_FIELD,
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help=f"precision of the E-step matrix products (default: {_DEFAULTS.precision}; see benchmarks/classify.py)",
    )


def params_from_args(args: argparse.Namespace) -> Class2DParams:
    """The classification parameters: cryoSPARC's defaults, then ``--config``, then the flags given.

    Raises
    ------
    ConfigError
        An invalid config file or an invalid value.
    """
    params = load_config(args.config).classification if getattr(args, "config", None) is not None else Class2DParams()
    names = [f.field for f in PARAM_FLAGS] + [FORCE_MAX_FIELD, PRECISION_FIELD]
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return dataclasses.replace(params, **overrides) if overrides else params


__all__ = [
    "FORCE_MAX_FIELD",
    "PARAM_FLAGS",
    "PRECISION_FIELD",
    "ParamFlag",
    "add_classification_args",
    "params_from_args",
]
