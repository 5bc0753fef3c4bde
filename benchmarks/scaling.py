"""Data-parallel scaling of offline classification: particles/s with 1, 2, ... processes on one machine.

Each configuration classifies the same synthetic set (the simulator's phantom, box 64 at 4 Å/px,
SNR 0.05, 20 % junk, made in memory by every process from one seed) with cryoSPARC's schedule:
1 process runs ``otf2d.engine.em.driver.classify_batches`` (what ``otf2d classify`` runs without
--nproc); N > 1 processes run ``otf2d.engine.em.distributed.classify_sharded`` under torch's
launcher (gloo on the CPU, NCCL on CUDA), as ``otf2d classify --nproc N`` does. The total number of
CPU threads is fixed (``--cores``, default every usable core): each of N processes gets cores / N.

Columns: processes, threads per process, wall seconds of the classification (after the set is
made; data preparation included), particles/s (particles put through an E-step, as the progress
bar counts them: ``planned_work``), efficiency = particles/s over 1 process's on the same cores
(the speed-up, since the cores are the same; on N devices it would be the speed-up / N), the
seconds rank 0 spent in collectives (all_reduce of the statistics, gather of the assignments) and
their share. Agreement = share of particles whose class equals the 1-process run's.

Usage::

    .venv/bin/python benchmarks/scaling.py                      # 1 and 2 processes, ~1-2 min on 2 cores
    .venv/bin/python benchmarks/scaling.py --procs 1,2,4 --particles 20000 --classes 50
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from otf2d.core.config import Class2DParams
from otf2d.core.particles import ParticleBatch
from otf2d.engine.em.distributed import classify_sharded
from otf2d.engine.em.driver import ClassificationResult, classify_batches, planned_work
from otf2d.engine.resources.ranks import join, launch_local, leave, rank_env, threads_per_process
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.particles import simulate_particles

#: The simulated particles: the phantom in a 64 px box at 4 Å/px.
BOX, PIXEL_ANGSTROM = 64, 4.0


def synthetic_set(n: int, seed: int) -> ParticleBatch:
    """``n`` simulated particles in memory (the same on every process for one seed)."""
    config = SimulationConfig(n_particles=n, box=BOX, pixel_size_angstrom=PIXEL_ANGSTROM, seed=seed)
    sim = simulate_particles(config, n, np.random.default_rng(seed))
    return ParticleBatch(
        images=sim.images,
        pixel_size_angstrom=PIXEL_ANGSTROM,
        ctf=sim.ctf,
        session="scaling",
        stack_paths=np.array([f"synthetic/stack_{i // 1000:04d}.mrcs" for i in range(n)]),
        indices=np.arange(n, dtype=np.int64) % 1000 + 1,
        optics_groups=np.ones(n, dtype=np.int64),
    )


def params_from(args: argparse.Namespace) -> Class2DParams:
    return Class2DParams(
        n_classes=args.classes,
        batch_size_per_class=args.batch_per_class,
        online_em_iterations=args.online_em_iterations,
        final_full_iterations=args.final_full_iterations,
        seed=args.seed,
    )


def worker(args: argparse.Namespace) -> None:
    """One process of one configuration: classify, and (rank 0) write the timing to ``args.result``."""
    torch.set_num_threads(args.threads)
    particles = synthetic_set(args.particles, args.seed)
    params = params_from(args)
    place = rank_env()
    comm = 0.0
    result: ClassificationResult | None
    if place is None:
        start = time.perf_counter()
        result = classify_batches(particles, params)
    else:
        ranks, _ = join(place, torch.device("cpu"))
        try:
            torch.distributed.barrier()  # every rank has made the set: time from here
            start = time.perf_counter()
            result = classify_sharded(particles, params, ranks)
            comm = ranks.comm_seconds
        finally:
            leave()
    seconds = time.perf_counter() - start
    if result is None:
        return
    classes = result.assignments.class_index.numpy()
    np.save(args.result.with_suffix(".npy"), classes)
    record = {"seconds": seconds, "comm_seconds": comm, "work": planned_work(len(particles), params)}
    args.result.write_text(json.dumps(record))


def run_configuration(nproc: int, cores: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """Run one configuration in fresh processes; its timing record."""
    threads = max(1, cores // nproc)
    result = out / f"nproc{nproc}.json"
    argv = [str(Path(__file__).resolve()), "--worker", "--result", str(result), "--threads", str(threads)]
    argv += [f"--{k}={v}" for k, v in shared_options(args).items()]
    if nproc == 1:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        env.pop("WORLD_SIZE", None)
        subprocess.run([sys.executable, *argv], check=True, env=env)
    elif launch_local(nproc, argv, threads, module=None) != 0:
        raise SystemExit(f"{nproc} processes failed")
    record = json.loads(result.read_text())
    record["threads"] = threads
    record["classes"] = np.load(result.with_suffix(".npy"))
    return record


def shared_options(args: argparse.Namespace) -> dict[str, object]:
    names = ("particles", "classes", "batch_per_class", "online_em_iterations", "final_full_iterations", "seed")
    return {name.replace("_", "-"): getattr(args, name) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2", help="process counts, comma-separated (default %(default)s)")
    parser.add_argument("--cores", type=int, default=None, help="CPU threads in all (default: every usable core)")
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-per-class", type=int, default=100)
    parser.add_argument("--online-em-iterations", type=int, default=6)
    parser.add_argument("--final-full-iterations", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    procs = [int(p) for p in args.procs.split(",")]
    cores = threads_per_process(1, args.cores)
    rows = []
    with tempfile.TemporaryDirectory(prefix="otf2d-scaling-") as tmp:
        for nproc in procs:
            rows.append((nproc, run_configuration(nproc, cores, args, Path(tmp))))
    base = rows[0][1]
    base_rate = base["work"] / base["seconds"]
    print(
        f"{args.particles} particles, K = {args.classes}, batch {args.batch_per_class} x K, "
        f"{args.online_em_iterations} online + {args.final_full_iterations} full iterations, "
        f"{cores} CPU threads in all, torch {torch.__version__}"
    )
    print(f"{'procs':>5} {'thr/proc':>8} {'seconds':>8} {'particles/s':>11} {'efficiency':>10} "
          f"{'comm s':>7} {'comm %':>6} {'agree':>6}")  # fmt: skip
    for nproc, r in rows:
        rate = r["work"] / r["seconds"]
        agree = float(np.mean(r["classes"] == base["classes"]))
        print(
            f"{nproc:>5} {r['threads']:>8} {r['seconds']:>8.1f} {rate:>11,.0f} {rate / base_rate:>10.0%} "
            f"{r['comm_seconds']:>7.2f} {r['comm_seconds'] / r['seconds']:>6.1%} {agree:>6.1%}"
        )


if __name__ == "__main__":
    main()
