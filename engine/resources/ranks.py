"""Processes of a data-parallel run: torchrun's environment, the process group, the local launcher.

``otf2d classify --nproc N`` launches ``N`` local copies of itself through torch's own launcher
(``torch.distributed.run``, what ``torchrun`` runs): :func:`launch_local`. Each copy, and each
process that ``torchrun --nproc-per-node N -m otf2d.core.cli classify ...`` starts on any number of
nodes, finds its place in the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``: :func:`rank_env`) and joins the default process group
(:func:`join`): gloo on the CPU, NCCL on CUDA with rank ``LOCAL_RANK`` on ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from otf2d.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from otf2d.engine.em.distributed import Ranks

#: What torchrun sets for every worker.
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class RankEnv:
    """A worker's place, from torchrun's environment variables."""

    rank: int
    world_size: int
    local_rank: int


def _int_variable(env: Mapping[str, str], name: str, default: str | None = None) -> int:
    text = env.get(name, default)
    if text is None:
        raise ConfigError(None, f"{name} is not set ({', '.join(RANK_VARIABLES)} come from torchrun)")
    try:
        return int(text)
    except ValueError:
        raise ConfigError(None, f"{name}={text!r} is not an integer") from None


def rank_env(env: Mapping[str, str] | None = None) -> RankEnv | None:
    """This process's rank when a launcher started it as one of several (``WORLD_SIZE`` > 1), else ``None``.

    Raises
    ------
    ConfigError
        A malformed or inconsistent ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, or no ``MASTER_ADDR``/``MASTER_PORT``.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    world = _int_variable(env, "WORLD_SIZE")
    if world < 1:
        raise ConfigError(None, f"WORLD_SIZE must be >= 1, got {world}")
    if world == 1:
        return None
    rank = _int_variable(env, "RANK")
    local = _int_variable(env, "LOCAL_RANK", str(rank))
    if not 0 <= rank < world:
        raise ConfigError(None, f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    if local < 0:
        raise ConfigError(None, f"LOCAL_RANK must be >= 0, got {local}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise ConfigError(None, f"{name} is not set: start the processes with torchrun (WORLD_SIZE={world})")
    _int_variable(env, "MASTER_PORT")
    return RankEnv(rank, world, local)


def join(place: RankEnv, device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the default process group (gloo on the CPU, NCCL on CUDA); this rank's compute device.

    Raises
    ------
    ConfigError
        CUDA asked for on a node with fewer GPUs than local ranks.
    """
    import torch
    import torch.distributed as dist

    from otf2d.engine.em.distributed import Ranks

    if device.type == "cuda":
        if place.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                None, f"LOCAL_RANK {place.local_rank} but only {torch.cuda.device_count()} CUDA device(s) on this node"
            )
        device = torch.device("cuda", place.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=place.rank, world_size=place.world_size, device_id=device)
    else:
        dist.init_process_group("gloo", rank=place.rank, world_size=place.world_size)
    return Ranks(place.rank, place.world_size, device), device


def leave() -> None:
    """Leave the default process group (after the last collective)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def threads_per_process(nproc: int, threads: int | None) -> int:
    """``threads`` when given, else this machine's usable cores divided among ``nproc`` processes (at least 1)."""
    if threads is not None:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // nproc)


def launch_local(nproc: int, argv: Sequence[str], threads: int, module: str | None = "otf2d.core.cli") -> int:
    """Run ``python -m module argv`` as ``nproc`` ranks on this node with torch's launcher; the exit status.

    With ``module`` ``None``, ``argv[0]`` is a script to run with the arguments ``argv[1:]``.

    The rendezvous is on a free loopback port (torchrun ``--standalone``), or on ``MASTER_ADDR``:
    ``MASTER_PORT`` when those are set. Each rank runs ``threads`` CPU threads (``OMP_NUM_THREADS``).
    When one rank fails the launcher stops the others; its error is printed above the launcher's.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    port = os.environ.get("MASTER_PORT")
    if port:
        addr = os.environ.get("MASTER_ADDR") or "127.0.0.1"
        rendezvous = ["--nnodes=1", "--node-rank=0", f"--master-addr={addr}", f"--master-port={port}"]
    else:
        rendezvous = ["--standalone"]
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        program = ["-m", module] if module is not None else [argv[0]]
        config = get_args_parser().parse_args([*rendezvous, f"--nproc-per-node={nproc}", *program])
        # set after parsing: torchrun's parser would take options like --nproc as abbreviations of its own
        config.training_script_args = list(argv if module is not None else argv[1:])
        run(config)
    except ChildFailedError:
        print(f"{nproc} processes: a rank failed (its error is above)", file=sys.stderr)
        return 1
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return 0


__all__ = ["RANK_VARIABLES", "RankEnv", "join", "launch_local", "leave", "rank_env", "threads_per_process"]
