"""The classifier's state as tensors and plain numbers: checkpoints without pickled objects.

``pack_state`` gives a flat ``dict`` of CPU tensors (complex ones as ``(..., 2)`` real views, so
formats without complex dtypes can hold them), ints, floats and the parameter and geometry
dicts (plain values): ``torch.save`` / ``torch.load(weights_only=True)`` round-trips it, and so
does any writer of named arrays plus a JSON header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from otf2d.core.errors import InputError
from otf2d.engine.em.mstep import SufficientStats

#: Format version of the packed state.
STATE_VERSION = 1


@dataclass(frozen=True)
class ClassifierState:
    """Everything a classifier needs to continue exactly where it was."""

    params: dict[str, Any]
    geometry: dict[str, Any]
    iteration: int
    n_updates: int
    variance: float
    stats: SufficientStats
    sigma2: torch.Tensor
    references: torch.Tensor
    images: torch.Tensor
    tau2: torch.Tensor | None
    generator: torch.Tensor


def pack_state(state: ClassifierState) -> dict[str, Any]:
    """A flat ``dict`` of CPU tensors and plain values (see the module docstring)."""
    out: dict[str, Any] = {
        "version": STATE_VERSION,
        "params": dict(state.params),
        "geometry": dict(state.geometry),
        "iteration": int(state.iteration),
        "n_updates": int(state.n_updates),
        "variance": float(state.variance),
        "stats.numerator": torch.view_as_real(state.stats.numerator).cpu().clone(),
        "stats.ctf2": state.stats.ctf2.cpu().clone(),
        "stats.counts": state.stats.counts.cpu().clone(),
        "stats.power": state.stats.power.cpu().clone(),
        "stats.weight": state.stats.weight.cpu().clone(),
        "sigma2": state.sigma2.cpu().clone(),
        "references": torch.view_as_real(state.references).cpu().clone(),
        "images": state.images.cpu().clone(),
        "generator": state.generator.cpu().clone(),
    }
    if state.tau2 is not None:
        out["tau2"] = state.tau2.cpu().clone()
    return out


def unpack_state(packed: dict[str, Any], device: torch.device | str = "cpu") -> ClassifierState:
    """The inverse of :func:`pack_state`, tensors on ``device`` (the generator state stays on the CPU).

    Raises
    ------
    InputError
        If the version differs or a field is missing.
    """
    if packed.get("version") != STATE_VERSION:
        raise InputError(None, f"checkpoint version {packed.get('version')} is not {STATE_VERSION}")
    try:
        stats = SufficientStats(
            numerator=torch.view_as_complex(packed["stats.numerator"].contiguous()).to(device),
            ctf2=packed["stats.ctf2"].to(device),
            counts=packed["stats.counts"].to(device),
            power=packed["stats.power"].to(device),
            weight=packed["stats.weight"].to(device),
        )
        return ClassifierState(
            params=dict(packed["params"]),
            geometry=dict(packed["geometry"]),
            iteration=int(packed["iteration"]),
            n_updates=int(packed["n_updates"]),
            variance=float(packed["variance"]),
            stats=stats,
            sigma2=packed["sigma2"].to(device),
            references=torch.view_as_complex(packed["references"].contiguous()).to(device),
            images=packed["images"].to(device),
            tau2=packed["tau2"].to(device) if "tau2" in packed else None,
            generator=packed["generator"].cpu(),
        )
    except KeyError as exc:
        raise InputError(None, f"checkpoint lacks {exc.args[0]!r}") from exc


__all__ = ["STATE_VERSION", "ClassifierState", "pack_state", "unpack_state"]
