"""Run everything at once: a virtual microscope writes a session, the streamer ships it, the engine classifies.

Example usage:

    otf2d demo                                   # ~3 minutes, 9,000 particles, 20 classes
    otf2d demo --duration 60 --particles 3000    # shorter
    otf2d demo --junk-fraction 0.8               # a bad grid: watch the verdict turn
    otf2d demo --preferred-orientation           # most particles in one view
    otf2d demo --keep-serving                    # leave the status page up after the session

No arguments are needed. Each run gets a fresh folder under --dir (default ./otf2d-demo/run-<time>;
earlier runs are left alone) and starts three processes, each logging to logs/ there:

  engine       otf2d engine on free loopback ports: ZeroMQ for the streamer, HTTP for the
               status page (/), /status.json, /gallery.png and /metrics (Prometheus)
  streamer     otf2d stream watching microscope/ (ledger: ledger.sqlite)
  microscope   otf2d simulate writing RELION Extract output into microscope/ at a steady pace
               (--particles over --duration seconds, or at --rate particles per minute)

While the session runs, a status line is printed every --interval seconds: time, particles written
by the microscope / acknowledged to the streamer / journaled / classified by the engine, classes
populated, junk fraction, grid verdict and classification rate. The gallery PNG and the snapshots
(RELION Class2D, cryoSPARC .cs) are rewritten every few seconds. After the microscope has written
its last micrograph the demo waits (at most --final-wait seconds) until every particle is
classified, asks for a final snapshot and prints a summary: the verdict with its reasons and where
every output is. Ctrl-C (or SIGTERM) stops all three processes cleanly (exit status 130, or 0 for
SIGTERM and for Ctrl-C after the summary of --keep-serving); a process that dies ends the demo with
an error naming its log file.

Demo classification parameters. Online 2D classification with cryoSPARC's defaults (alignment to
6 Å, marginalisation over poses for K <= 20, 20 online-EM iterations of 100 particles per class)
is far too slow for a 2-core CPU to keep up with a microscope, so unless --standard-params is given
the demo's engine runs a screening setup (written to engine.toml in the run folder):
force_max_over_poses = true (best pose per class, not the full posterior), online_em_iterations = 5,
batch_size_per_class = 50 (classes exist after K x 50 particles), max_resolution_angstrom = 12
(the 64-px, 4 A/px particles are Fourier-cropped to 44 px), in_plane_step_degrees = 10 and
max_shift_angstrom = 16. On a GPU, --standard-params runs the defaults. The grid verdict needs
2,000 classified particles and one minute of history before it leaves "pending".

CPU threads: on a small machine the engine's tensor math runs on one thread by default (--threads):
with one OpenMP thread per core, and the streamer and the microscope on the same cores, the
threads wait on each other and classification gets tens of times slower.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from otf2d.demo.demo_run import PARTICLES_PER_MICROGRAPH, Demo, DemoError, DemoPlan, fresh_run_dir


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``otf2d demo``."""
    parser.add_argument(
        "--dir", type=Path, default=Path("otf2d-demo"), help="working folder (default ./otf2d-demo); a run-* per run"
    )
    parser.add_argument("--duration", type=float, default=180.0, help="seconds the microscope writes (default 180)")
    parser.add_argument("--particles", type=int, default=9000, help="particles in the session (default 9000)")
    parser.add_argument(
        "--rate", type=float, default=None, metavar="PER_MIN", help="particles per minute (overrides --duration)"
    )
    parser.add_argument(
        "--micrographs",
        type=int,
        default=None,
        help=f"micrographs to spread them over (default one per {PARTICLES_PER_MICROGRAPH} particles)",
    )
    parser.add_argument("--classes", type=int, default=20, help="number of 2D classes (default 20)")
    parser.add_argument("--junk-fraction", type=float, default=0.2, help="share of junk images (default 0.2)")
    parser.add_argument("--preferred-orientation", action="store_true", help="most particles in one view (a bad grid)")
    parser.add_argument("--snr", type=float, default=0.05, help="signal/noise of the images (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the microscope (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the engine runs")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of the engine's tensor math (default: 1 on machines with up to 4 cores, else half of them)",
    )
    parser.add_argument(
        "--standard-params",
        action="store_true",
        help="classify with cryoSPARC's default parameters instead of the demo's faster ones",
    )
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between status lines (default 3)")
    parser.add_argument(
        "--final-wait",
        type=float,
        default=180.0,
        help="longest wait for the last particles to be classified after the microscope stops (default 180 s)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=120.0, help="longest wait for the engine to answer (default 120 s)"
    )
    parser.add_argument(
        "--keep-serving", action="store_true", help="after the summary keep the engine and status page up until Ctrl-C"
    )


def main(args: argparse.Namespace) -> int:
    """Run the demo; 0 when the session was classified, 130 after Ctrl-C, 0 after SIGTERM."""
    plan = DemoPlan.from_args(args)
    base = args.dir.resolve()
    earlier = sorted(base.glob("run-*")) if base.is_dir() else []
    run_dir = fresh_run_dir(base)
    demo = Demo(plan, run_dir, interval_s=args.interval, keep_serving=args.keep_serving)
    if earlier:
        print(f"otf2d demo: {len(earlier)} earlier run(s) in {demo.rel(base)} are kept (delete them with rm -r)")
    previous = {sig: signal.signal(sig, demo.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    finished = False
    try:
        demo.start(args.startup_timeout)
        if demo.signal_received is None:
            demo.run_session(args.final_wait)
        if demo.signal_received is None:
            record = demo.final_snapshot()
        if demo.signal_received is None:
            state_path = demo.save_state()
            obs = demo.observe()
            print(demo.summary(obs, record, state_path), flush=True)
            finished = True
            if args.keep_serving:
                print(
                    "The engine keeps serving the status page and refreshing the snapshots (latest.json names "
                    "the newest); Ctrl-C stops it.",
                    flush=True,
                )
                while demo.signal_received is None:
                    demo.check_children()
                    demo.sleep(1.0)
    finally:
        interrupted = demo.signal_received
        if interrupted is not None:
            print(
                f"\notf2d demo: {signal.Signals(interrupted).name}: stopping the microscope, the streamer and the "
                "engine…",
                flush=True,
            )
        demo.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if interrupted is not None:
        print(f"stopped; what was written so far is in {demo.rel(run_dir)} (logs in {demo.rel(demo.logs)}/)")
        if interrupted == signal.SIGINT and not finished:
            return 130
    return 0


__all__ = ["Demo", "DemoError", "DemoPlan", "add_args", "main"]
