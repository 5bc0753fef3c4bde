"""E-step / E+M throughput of the online-EM classifier, fp32 vs bf16, and bf16 agreement.

Configurations (``algorithm.md`` §14): internal box 64, 5° in-plane step (72 rotations), shifts
±3 px in 1 px steps on a disc (29), K = 50 (A) and K = 200 (B). Particles are synthetic (Gaussian
blob templates, rotated, shifted, RELION CTF, white noise) at 64 px, so preprocessing is included
but no Fourier cropping. Throughput is particles per second of one ``Classifier.step`` (E-step of
the batch + online update + M-step) and of ``Classifier.assign`` (E-step only), best of
``--repeats``; the classifier state is restored (untimed) before each timed step. The batch is
cryoSPARC's online-EM batch by default (batch size per class 100 × K, at most 5,000 particles).

Precisions: ``fp32``; ``bf16`` = GEMM inputs rounded to bfloat16, products summed in float32
(what a tensor-core GEMM computes; on a CPU without bf16 units it runs as an fp32 GEMM);
``bf16-native`` = the GEMM run in bfloat16 by torch (on CPUs without AVX512-BF16/AMX this is
emulated and slow; measured on fewer particles). Agreement = share of particles with the same
class, and with the same class, rotation and shift, as fp32 on the same state.

Columns: particles/s by wall clock with ``--threads`` threads (E+M and E only), E+M particles/s
per core by the CPU time of one thread (robust to other load on a shared machine), agreement.

Usage::

    .venv/bin/python benchmarks/estep_speed.py                 # configurations A and B
    .venv/bin/python benchmarks/estep_speed.py --classes 50 --particles 1024 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from otf2d.core.config import Class2DParams
from otf2d.core.particles import CtfParams
from otf2d.engine.em.classifier import Classifier, TensorBatch
from otf2d.engine.em.ctf import CtfTensors, relion_ctf_grid

BOX = 64
PIXEL = 2.0


def synthetic_batch(n: int, n_templates: int, seed: int) -> TensorBatch:
    """Noisy, rotated, shifted, CTF-affected particles of random blob templates (box 64, 2 Å/px)."""
    rng = np.random.default_rng(seed)
    c = np.arange(BOX) - BOX // 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    templates = []
    for _ in range(n_templates):
        r = 0.3 * BOX * np.sqrt(rng.uniform(0.05, 1.0, 6))
        a = rng.uniform(0, 2 * np.pi, 6)
        centres = np.stack([r * np.cos(a), r * np.sin(a)], 1)
        centres -= centres.mean(0)
        templates.append((centres, rng.uniform(0.5, 1.0, 6), rng.uniform(0.04, 0.08, 6) * BOX))
    which = rng.integers(0, n_templates, n)
    psi = np.deg2rad(rng.integers(0, 72, n) * 5.0)
    shift = rng.integers(-2, 3, (n, 2))
    images = np.zeros((n, BOX, BOX))
    for i in range(n):
        centres, amps, widths = templates[which[i]]
        rot = np.array([[np.cos(psi[i]), np.sin(psi[i])], [-np.sin(psi[i]), np.cos(psi[i])]])
        for (x, y), amp, w in zip(centres @ rot.T - shift[i], amps, widths, strict=True):
            images[i] += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * w * w))
    df = rng.uniform(8000, 20000, n)
    ctf = CtfParams(
        defocus_u_angstrom=df + 200.0,
        defocus_v_angstrom=df - 200.0,
        defocus_angle_degrees=rng.uniform(-180, 180, n),
        voltage_kv=np.full(n, 300.0),
        spherical_aberration_mm=np.full(n, 2.7),
        amplitude_contrast=np.full(n, 0.1),
        phase_shift_degrees=np.zeros(n),
        bfactor_angstrom2=np.zeros(n),
        scale=np.ones(n),
    )
    ctf_t = CtfTensors.from_params(ctf)
    c_grid = relion_ctf_grid(ctf_t, BOX, PIXEL).to(torch.float64).numpy()
    images = np.fft.irfft2(np.fft.rfft2(images) * c_grid, s=(BOX, BOX)) + rng.normal(0, 1.0, images.shape)
    return TensorBatch(torch.as_tensor(images, dtype=torch.float32), ctf_t)


def params(k: int) -> Class2DParams:
    """Configuration A (K = 50) or B (K = 200)."""
    return Class2DParams(
        n_classes=k,
        max_resolution_angstrom=2 * PIXEL,
        in_plane_step_degrees=5.0,
        max_shift_angstrom=3 * PIXEL,
        force_max_over_poses=True,
    )


def throughput(fn: object, n: int, repeats: int, setup: object = None) -> tuple[float, float]:
    """Best particles/s of ``fn()`` over ``repeats`` runs: by wall clock, and by this thread's CPU time.

    ``setup()`` (untimed) runs before each repeat. The CPU-time figure is only meaningful with one
    intra-op thread (all the work then runs on the calling thread); it is what one core does
    regardless of what else runs on the machine.
    """
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        if setup is not None:
            setup()  # type: ignore[operator]
        t, c = time.perf_counter(), time.thread_time()
        fn()  # type: ignore[operator]
        best_wall = min(best_wall, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.thread_time() - c)
    return n / best_wall, n / best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[50, 200])
    parser.add_argument(
        "--particles",
        type=int,
        default=None,
        help="batch per step (E+M) and per assign (E); default cryoSPARC's batch, 100 per class, at most 5000",
    )
    parser.add_argument("--native-particles", type=int, default=64, help="batch for bf16-native (slow on CPUs)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.particles is None:
        args.particles = min(5000, 100 * max(args.classes))
    batch = synthetic_batch(args.particles, 10, seed=0)
    small = TensorBatch(batch.images[: args.native_particles], batch.ctf.take(slice(0, args.native_particles)))
    print(
        f"torch {torch.__version__}, {args.threads} threads, device {args.device}, {args.particles} particles/batch, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    header = ("config", "K", "precision", "E+M wall", "E wall", "E+M 1-core", "same class", "same pose")
    print(f"{header[0]:<7}{header[1]:>4}{header[2]:>13}" + "".join(f"{h:>12}" for h in header[3:]))
    for k in args.classes:
        torch.set_num_threads(args.threads)
        clf = Classifier(params(k), BOX, PIXEL, device=args.device)
        g = clf.geometry
        clf.initialise(batch)
        clf.step(batch)  # warm up, and classes that are not the random start
        state = clf.state_dict()
        reference = clf.assign(batch)
        name = {50: "A", 200: "B"}.get(k, "-")
        rows = [
            ("fp32", None, False, batch),
            ("bf16", torch.bfloat16, False, batch),
            ("bf16-native", torch.bfloat16, True, small),
        ]
        for label, dtype, native, data in rows:
            clf.load_state_dict(state)
            clf.gemm_dtype, clf.native_low_precision = dtype, native
            n = len(data)

            def em(clf: Classifier = clf, data: TensorBatch = data) -> None:
                clf.step(data)

            def restore(clf: Classifier = clf, state: dict = state) -> None:
                clf.load_state_dict(state)

            torch.set_num_threads(args.threads)
            e_rate, _ = throughput(lambda clf=clf, data=data: clf.assign(data), n, args.repeats)
            em_rate, _ = throughput(em, n, args.repeats, restore)
            torch.set_num_threads(1)
            _, em_core = throughput(em, n, args.repeats, restore)
            torch.set_num_threads(args.threads)
            clf.load_state_dict(state)
            got = clf.assign(data)
            ref = reference.take(torch.arange(n))
            same_class = float((got.class_index == ref.class_index).float().mean())
            same_pose = float(
                (
                    (got.class_index == ref.class_index)
                    & (got.psi_degrees == ref.psi_degrees)
                    & (got.origin_x_angstrom == ref.origin_x_angstrom)
                    & (got.origin_y_angstrom == ref.origin_y_angstrom)
                )
                .float()
                .mean()
            )
            print(
                f"{name:<7}{k:>4}{label:>13}{em_rate:>12.0f}{e_rate:>12.0f}{em_core:>12.0f}"
                f"{same_class:>12.3f}{same_pose:>12.3f}"
            )
        print(
            f"       (internal box {g.internal_box}, R = {g.n_rotations}, T = {len(g.shift_grid())} shifts, "
            f"Q = {g.n_angles} polar angles, chunk {clf.chunk_size})"
        )
    print(
        "ptcl/s: 'wall' with all threads (shared machines: lower while others run); '1-core' = one thread's "
        "CPU time (what each core adds); 'same' = agreement with fp32 on the same state."
    )


if __name__ == "__main__":
    main()
