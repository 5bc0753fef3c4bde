"""Where the tensor math runs and on how many CPU threads: one choice for ``otf2d engine`` and ``otf2d classify``.

``--device auto`` (the default) is CUDA when a device is present, else the CPU; ``--device cuda`` without a
CUDA device is a configuration error, not a silent fallback. ``--threads N`` sets torch's intra-op threads
(default: torch's own, one per core); on a small machine shared with the streamer, 1 avoids OpenMP
oversubscription, which can make classification steps tens of times slower. torch is imported only when the
choice is made, so a command's ``--help`` stays light.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from otf2d.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: Values of ``--device``.
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def add_device_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device`` and ``--threads``, with the same meaning and help in every command."""
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="where the tensor math runs: auto = CUDA when present, else the CPU (default %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads of the tensor math (default: torch's, one per core); on a small machine shared with "
        "the streamer, 1 avoids oversubscription",
    )


def check_threads(threads: int | None) -> None:
    """Refuse a thread count below 1 (``None``: torch's default).

    Raises
    ------
    ConfigError
        ``threads`` < 1.
    """
    if threads is not None and threads < 1:
        raise ConfigError(None, f"--threads must be >= 1, got {threads}")


def choose_device(device: str, threads: int | None) -> torch.device:
    """Set torch's CPU threads and return the device asked for.

    Raises
    ------
    ConfigError
        ``threads`` < 1, an unknown ``device``, or ``cuda`` without a CUDA device.
    """
    check_threads(threads)
    if device not in DEVICE_CHOICES:
        raise ConfigError(None, f"--device must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}")
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(None, "--device cuda: no CUDA device is available")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


__all__ = ["DEVICE_CHOICES", "add_device_args", "check_threads", "choose_device"]
