"""otf2d fold-memory benchmark: does the classifier's memory stay flat over online-EM steps of every size?

A streaming engine folds whatever has arrived, so its batches have every size from one micrograph
to ``max_step_particles``. This folds random-size batches (20 to 2,048 particles, drawn with a
fixed seed from ``estep_speed``'s synthetic particles) into a classifier with the demo's screening
parameters (K = 50, box 64) and prints, every --every steps, the memory it holds: on CUDA what
torch has allocated and reserved on the GPU, on the CPU the process's resident size. Until the
E-step's GEMM workspace became one block (``otf2d.engine.em.estep.GemmWorkspace``) it kept a buffer per
chunk width, and the memory grew with every new batch size: on an NVIDIA H200 (2026-12-04) the
allocated GPU memory went 471 → 2,935 MB from step 20 to step 200 (191 batch sizes); it now stays
at 77 MB (188 MB reserved).

Usage::

    .venv/bin/python benchmarks/fold_memory.py                  # CUDA if present, else CPU; 200 steps
    .venv/bin/python benchmarks/fold_memory.py --device cpu --steps 60 --every 10
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence

import torch
from estep_speed import BOX, PIXEL, synthetic_batch

from otf2d.core.config import Class2DParams
from otf2d.demo.demo_run import DEMO_CLASSIFICATION
from otf2d.engine.em.classifier import Classifier, TensorBatch
from otf2d.engine.resources.memory import device_memory_bytes, resident_memory_bytes

CLASSES = 50
#: Particles in the synthetic set the batches are drawn from.
POOL = 4000
#: Smallest and largest batch folded (the engine's ``max_step_particles``).
SMALLEST, LARGEST = 20, 2048
#: Most growth from the first reading to the last that counts as flat.
FLAT = 0.10


def memory_mb(device: torch.device) -> tuple[float, float]:
    """``(allocated, reserved)`` GPU MB on CUDA; ``(RSS, peak RSS)`` MB on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        held = device_memory_bytes(device)
        return held["allocated"] / 2**20, held["reserved"] / 2**20
    rss = resident_memory_bytes()
    return rss.get("resident_bytes", float("nan")) / 2**20, rss.get("peak_resident_bytes", float("nan")) / 2**20


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    pool = synthetic_batch(POOL, 8, seed=0)  # estep_speed's particles: box 64, 2 Å/px

    def take(first: int, n: int) -> TensorBatch:
        return TensorBatch(pool.images[first : first + n], pool.ctf.take(slice(first, first + n)))

    params = Class2DParams(n_classes=CLASSES, **DEMO_CLASSIFICATION)
    clf = Classifier(params, BOX, PIXEL, device=device)
    clf.initialise(take(0, params.n_classes * params.batch_size_per_class))
    sizes = random.Random(args.seed)
    kind = ("allocated MB", "reserved MB") if device.type == "cuda" else ("RSS MB", "peak RSS MB")
    print(
        f"otf2d fold-memory benchmark: K = {CLASSES}, box {BOX}, batches of {SMALLEST}-{LARGEST} particles "
        f"(seed {args.seed}), E-step chunk {clf.chunk_size}, on {device}",
        flush=True,
    )
    print(f"| steps | particles folded | distinct batch sizes | {kind[0]} | {kind[1]} | s |")
    print("|---:|---:|---:|---:|---:|---:|")
    seen: set[int] = set()
    folded = 0
    readings: list[float] = []
    start = time.monotonic()
    for step in range(1, args.steps + 1):
        n = sizes.randint(SMALLEST, LARGEST)
        first = sizes.randint(0, POOL - n)
        clf.step(take(first, n))
        seen.add(n)
        folded += n
        if step % args.every == 0 or step == args.steps:
            held, other = memory_mb(device)
            readings.append(held)
            print(f"| {step} | {folded} | {len(seen)} | {held:.0f} | {other:.0f} | {time.monotonic() - start:.0f} |")
    if len(readings) >= 2:
        growth = readings[-1] / readings[0] - 1.0
        verdict = "flat" if abs(growth) <= FLAT else "GROWING"
        print(f"{kind[0]} from the first reading to the last: {100 * growth:+.1f}% ({verdict}: within ±{FLAT:.0%})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to classify (auto)")
    parser.add_argument("--steps", type=int, default=200, help="online-EM steps (default 200)")
    parser.add_argument("--every", type=int, default=20, help="steps between readings (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch sizes (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        parser.error("--steps and --every must be at least 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
