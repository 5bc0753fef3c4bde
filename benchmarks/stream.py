"""otf2d streaming benchmark: sustained arrival rate, file-ready → classified latency, engine memory.

Everything runs as in production, as separate processes on this machine: ``otf2d engine`` (on the
CPU unless --device says otherwise) and ``otf2d stream`` watching a folder, into which this script
plays the microscope: it writes RELION Extract output (``Movies/bNNNNNN.mrcs`` + ``_extract.star``,
renamed into place, 100 particles per micrograph) at a fixed particle rate. The images come from a
pool of micrographs simulated once by the virtual microscope (``otf2d.simulator.session``); each replay
gets a new stack name (a hard link), so every particle has a new identity and is classified.

1. **Warm-up**: the first ``K × batch_size_per_class`` particles are written at once and the engine
   initialises its classes (not timed: a one-off per session).
2. **Rates** (--rates, particles/s; --seconds each): the pacer writes micrographs at that rate while
   the engine folds them in. Measured over the window: particles written and classified per second,
   the backlog (written − classified) when the window ends, and the latency from a file being ready
   (its ``_extract.star`` renamed into place, the streamer's ``file_ready_time``) to its particles
   being folded into the classes — from the engine's histogram
   ``otf2d_file_to_classified_latency_seconds`` over the window's particles (after a drain), p50 / p95
   interpolated within buckets as Prometheus' ``histogram_quantile`` does, and the exact share of
   particles classified within 2 s (a bucket edge). The engine *keeps up* when the backlog at the
   end of the window is at most 2 s of arrivals plus the micrograph just written.
3. **Memory**: the engine's resident memory (``VmRSS`` of ``/proc/<pid>/status``, and the peak
   ``VmHWM``) once --memory-marks particles (default 20,000 and 200,000) have been classified; the
   feed then runs as fast as the engine takes particles. Measured after the queue is empty and a
   snapshot has been requested, so both marks see the same kind of moment: the median of 21
   readings over 10 s, since the RSS of a working engine swings by tens of MB within seconds. On a
   CUDA engine also the GPU memory torch holds (allocated / reserved, from ``otf2d status``).
   --mmap-threshold-mb passes the engine's allocator setting (see ``otf2d.engine.resources.heap``).

Classification parameters: the demo's screening setup (``otf2d.demo.demo_run.DEMO_CLASSIFICATION``:
force max over poses, 5 online-EM iterations, 50 particles per class to initialise, alignment to
12 Å, 10° in-plane steps, ±16 Å shifts) with --classes K, unless --standard-params (cryoSPARC's
defaults). The engine's own defaults otherwise: snapshot every 2,000 particles or 30 s
(--snapshot-every, --snapshot-seconds), checkpoint every 2,000 particles or 60 s, steps of at most
2,048 particles; one CPU thread for the tensor math (--threads: with one thread per core and the
streamer on the same cores, the OpenMP threads wait on each other and steps get tens of times slower).

Usage::

    .venv/bin/python benchmarks/stream.py                       # rates 100-1000/s, 20k and 200k (~30 min)
    .venv/bin/python benchmarks/stream.py --quick               # smoke run (< 1 min)
    .venv/bin/python benchmarks/stream.py --rates 250,500 --seconds 60 --classes 20 --box 64
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otf2d.control.client import EngineClient, EngineTimeoutError
from otf2d.core.durable import write_text_atomic
from otf2d.demo.demo_run import DEMO_CLASSIFICATION, free_ports
from otf2d.engine.resources.memory import proc_status_bytes
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.session import iter_session

SESSION = "bench"
PARTICLES_PER_MICROGRAPH = 100
EXTRACT = Path("Extract") / "job005" / "Movies"
#: Targets of the issue "The streaming service".
TARGET_RATE = 500.0
TARGET_P95_SECONDS = 2.0
TARGET_MEMORY_GROWTH = 0.10
#: Engine RSS readings at each memory mark, and the time between them.
SETTLE_SAMPLES = 21
SETTLE_INTERVAL_S = 0.5


# ---------------------------------------------------------------------------------------------- processes


@dataclass
class Process:
    """A child process logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check(self) -> None:
        if not self.alive():
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"the {self.name} exited with {self.popen.returncode}; see {self.log}\n{tail}")


@contextmanager
def child(name: str, argv: list[str], log: Path) -> Iterator[Process]:
    """Run ``argv`` until the block ends (SIGTERM, then SIGKILL)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as handle:
        popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield Process(name, popen, log)
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(60)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(10)


def rss_mb(pid: int) -> dict[str, float]:
    """``VmRSS``, ``VmHWM`` (peak), ``RssAnon`` (heap, stacks) and ``RssFile`` (mapped files) of a
    process in MB (10⁶ bytes), from ``/proc/<pid>/status``."""
    status = proc_status_bytes(Path(f"/proc/{pid}/status"), ("VmRSS", "VmHWM", "RssAnon", "RssFile"))
    if "VmRSS" not in status:
        raise RuntimeError(f"no VmRSS in /proc/{pid}/status: has the engine exited?")
    return {key: value / 1e6 for key, value in status.items()}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------------- the microscope


class Microscope:
    """Replays a pool of simulated micrographs into ``watch`` under new names (see the module docstring)."""

    def __init__(self, pool: Path, watch: Path) -> None:
        self.watch = watch
        self.movies = watch / EXTRACT
        self.movies.mkdir(parents=True, exist_ok=True)
        pool_movies = pool / EXTRACT
        self.stacks = sorted(pool_movies.glob("mic_*.mrcs"))
        if not self.stacks:
            raise RuntimeError(f"no simulated micrographs in {pool_movies}")
        self.stars = [s.with_name(f"{s.stem}_extract.star").read_text() for s in self.stacks]
        self.counts = [sum(1 for line in text.splitlines() if "@" in line) for text in self.stars]
        self.next_index = 0
        self.written = 0

    def write_one(self) -> int:
        """Write the next micrograph (stack hard link, then its ``_extract.star`` via rename); its particle count."""
        i = self.next_index % len(self.stacks)
        self.next_index += 1
        name = f"b{self.next_index:07d}"
        stack = self.movies / f"{name}.mrcs"
        try:
            os.link(self.stacks[i], stack)
        except OSError:
            shutil.copyfile(self.stacks[i], stack)
        text = self.stars[i].replace(f"Movies/{self.stacks[i].name}", f"Movies/{name}.mrcs")
        write_text_atomic(self.movies / f"{name}_extract.star", text, fsync=False)  # renamed, as RELION writes
        self.written += self.counts[i]
        return self.counts[i]


def simulate_pool(out: Path, box: int, micrographs: int, seed: int = 0) -> Path:
    """Simulate ``micrographs`` micrographs of 100 particles (box ``box``, a 256 Å field) into ``out``."""
    config = SimulationConfig(
        n_particles=micrographs * PARTICLES_PER_MICROGRAPH,
        n_micrographs=micrographs,
        box=box,
        pixel_size_angstrom=256.0 / box,
        seed=seed,
    )
    for _ in iter_session(config, out, overwrite=True):
        pass
    return out / "Extract" / "job005" / "particles.star"


# ---------------------------------------------------------------------------------------------- engine observation


@dataclass
class Probe:
    """The engine's counts and latency histogram at one moment."""

    at: float
    journaled: int
    classified: int
    phase: str
    buckets: dict[float, float] = field(default_factory=dict)  # le → cumulative count
    recent: dict[str, Any] = field(default_factory=dict)


def parse_histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts ``{le: count}`` of histogram ``name`` in a text exposition."""
    out: dict[float, float] = {}
    prefix = f"{name}_bucket{{"
    for line in text.splitlines():
        if line.startswith(prefix):
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            out[math.inf if le == "+Inf" else float(le)] = float(value)
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` of cumulative ``buckets`` (linear within a bucket)."""
    edges = sorted(buckets)
    if not edges:
        return None
    total = buckets[edges[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower_edge, lower_count = 0.0, 0.0
    for edge in edges:
        count = buckets[edge]
        if count >= rank:
            if math.isinf(edge):
                return lower_edge  # beyond the last finite bucket: its edge, as Prometheus does
            width = count - lower_count
            return lower_edge + (edge - lower_edge) * ((rank - lower_count) / width if width > 0 else 1.0)
        lower_edge, lower_count = edge, count
    return None


class Engine:
    """Status and metrics of the engine under test."""

    def __init__(self, endpoint: str, http_port: int, process: Process) -> None:
        self.client = EngineClient(endpoint, timeout_s=30.0)
        self.metrics_url = f"http://127.0.0.1:{http_port}/metrics"
        self.process = process

    def probe(self) -> Probe:
        import urllib.request

        self.process.check()
        status = self.client.status(SESSION)
        session = status["sessions"].get(SESSION, {})
        with urllib.request.urlopen(self.metrics_url, timeout=30) as response:
            text = response.read().decode()
        return Probe(
            at=time.monotonic(),
            journaled=int(session.get("particles_journaled", 0)),
            classified=int(session.get("particles_classified", 0)),
            phase=str(session.get("phase", "?")),
            buckets=parse_histogram(text, "otf2d_file_to_classified_latency_seconds"),
            recent=dict(status["engine"].get("latency") or {}),
        )

    def wait_classified(self, n: int, timeout_s: float, what: str) -> Probe:
        deadline = time.monotonic() + timeout_s
        while True:
            probe = self.probe()
            if probe.classified >= n:
                return probe
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {probe.classified} of {n} classified after {timeout_s:.0f} s")
            time.sleep(0.5)

    def snapshot_now(self, timeout_s: float = 600.0) -> None:
        """Request a snapshot and wait until it is written."""
        wanted = int(self.client.snapshot(SESSION)["iteration"])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = self.client.status(SESSION)["sessions"][SESSION].get("last_snapshot") or {}
            if int(last.get("iteration", -1)) >= wanted:
                return
            time.sleep(0.5)
        raise TimeoutError(f"snapshot {wanted} not written within {timeout_s:.0f} s")


# ---------------------------------------------------------------------------------------------- measurements


@dataclass
class RateRow:
    offered: float
    written_per_s: float
    classified_per_s: float
    backlog_end: int
    p50_s: float | None
    p95_s: float | None
    within_2s: float | None
    recent_p50_s: float | None
    recent_p95_s: float | None
    n: int

    @property
    def keeps_up(self) -> bool:
        """The backlog when the window ends is at most 2 s of arrivals plus the micrograph just written.

        The window starts with an empty queue, so an engine slower than the arrivals by more than a
        few per cent ends a 30-s window with a larger backlog.
        """
        return self.backlog_end <= TARGET_P95_SECONDS * self.written_per_s + PARTICLES_PER_MICROGRAPH


def measure_rate(engine: Engine, microscope: Microscope, rate: float, seconds: float, drain_s: float) -> RateRow:
    """Write at ``rate`` particles/s for ``seconds``; measure throughput, backlog and latency (module docstring)."""
    before = engine.probe()
    written_before = microscope.written
    start = time.monotonic()
    due = start
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        if now < due:
            time.sleep(min(due - now, 0.05))
            continue
        n = microscope.write_one()
        due += n / rate
    end = time.monotonic()
    at_end = engine.probe()
    written = microscope.written - written_before
    window = end - start
    backlog = microscope.written - at_end.classified
    drained = engine.wait_classified(microscope.written, drain_s, f"draining after {rate:g}/s")
    delta = {le: drained.buckets.get(le, 0.0) - before.buckets.get(le, 0.0) for le in drained.buckets}
    total = delta.get(math.inf, 0.0)
    within = delta.get(TARGET_P95_SECONDS, 0.0) / total if total > 0 else None
    return RateRow(
        offered=rate,
        written_per_s=written / window,
        classified_per_s=(at_end.classified - before.classified) / (at_end.at - before.at),
        backlog_end=backlog,
        p50_s=histogram_quantile(0.5, delta),
        p95_s=histogram_quantile(0.95, delta),
        within_2s=within,
        recent_p50_s=drained.recent.get("p50_s"),
        recent_p95_s=drained.recent.get("p95_s"),
        n=int(total),
    )


@dataclass
class MemoryRow:
    """RSS of the engine at one mark: the median (and range) of the samples of the settle window."""

    particles: int
    rss_mb: float
    hwm_mb: float
    seconds: float
    anon_mb: float = float("nan")
    file_mb: float = float("nan")
    rss_min_mb: float = float("nan")
    rss_max_mb: float = float("nan")
    gpu_allocated_mb: float = float("nan")
    gpu_reserved_mb: float = float("nan")


def feed_until(engine: Engine, microscope: Microscope, target: int, max_backlog: int, timeout_s: float) -> float:
    """Write micrographs as fast as the engine classifies them (backlog ≤ ``max_backlog``) until ``target``."""
    start = time.monotonic()
    last_probe = engine.probe()
    while last_probe.classified < target:
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"only {last_probe.classified} of {target} classified after {timeout_s:.0f} s")
        while microscope.written < target and microscope.written - last_probe.classified < max_backlog:
            microscope.write_one()
        time.sleep(1.0)
        last_probe = engine.probe()
    return time.monotonic() - start


def measure_memory(engine: Engine, microscope: Microscope, mark: int, max_backlog: int, timeout_s: float) -> MemoryRow:
    seconds = feed_until(engine, microscope, mark, max_backlog, timeout_s)
    engine.wait_classified(microscope.written, timeout_s, "memory mark")
    engine.snapshot_now()
    # The engine keeps working between marks (revisits, snapshots): its RSS swings by tens of MB
    # within seconds as step buffers are taken and freed. One reading would measure the phase of
    # that cycle; the median over a window measures what the engine holds.
    samples = []
    for _ in range(SETTLE_SAMPLES):
        time.sleep(SETTLE_INTERVAL_S)
        samples.append(rss_mb(engine.process.popen.pid))
    rss = [m["VmRSS"] for m in samples]
    middle = samples[sorted(range(len(rss)), key=rss.__getitem__)[len(rss) // 2]]
    device = engine.client.status(SESSION)["engine"].get("memory", {})  # GPU memory of a CUDA engine
    return MemoryRow(
        engine.probe().classified,
        middle["VmRSS"],
        max(m["VmHWM"] for m in samples),
        seconds,
        middle.get("RssAnon", math.nan),
        middle.get("RssFile", math.nan),
        min(rss),
        max(rss),
        device.get("device_allocated_bytes", math.nan) / 2**20,
        device.get("device_reserved_bytes", math.nan) / 2**20,
    )


# ---------------------------------------------------------------------------------------------- main


@contextmanager
def pipeline(
    work: Path, args: argparse.Namespace, config: Path, pool: Path, optics: Path
) -> Iterator[tuple[Engine, Microscope]]:
    """A fresh engine and streamer in ``work`` (its own data, ledger and watched folder), warmed up.

    The first ``K × batch_size_per_class`` particles (plus one micrograph) are written at once and
    classified before this yields; both processes are stopped when the block ends.
    """
    for sub in ("watch", "engine", "logs", "ledger.sqlite"):
        path = work / sub
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (work / "logs").mkdir(parents=True)
    zmq_port, http_port = free_ports(2)
    endpoint = f"tcp://127.0.0.1:{zmq_port}"
    python = [sys.executable, "-m", "otf2d.core.cli"]
    engine_argv = [*python, "engine", "--listen", endpoint, "--data", str(work / "engine"), "--config", str(config)]
    engine_argv += ["--device", args.device, "--threads", str(args.threads), "--http-port", str(http_port)]
    engine_argv += ["--snapshot-every", str(args.snapshot_every), "--snapshot-seconds", str(args.snapshot_seconds)]
    if args.mmap_threshold_mb is not None:
        engine_argv += ["--mmap-threshold-mb", f"{args.mmap_threshold_mb:g}"]
    stream_argv = [*python, "stream", "--watch", str(work / "watch"), "--engine", endpoint, "--session", SESSION]
    stream_argv += ["--ledger", str(work / "ledger.sqlite"), "--optics-from", str(optics)]
    microscope = Microscope(pool, work / "watch")
    with child("engine", engine_argv, work / "logs" / "engine.log") as engine_process:
        deadline = time.monotonic() + 120
        with EngineClient(endpoint, timeout_s=1.0) as ping:
            while True:
                engine_process.check()
                try:
                    ping.ping()
                    break
                except EngineTimeoutError:
                    if time.monotonic() > deadline:
                        raise
        engine = Engine(endpoint, http_port, engine_process)
        params = engine.client.start_session(SESSION, {})["params"]
        n_init = int(params["n_classes"]) * int(params["batch_size_per_class"])
        try:
            with child("streamer", stream_argv, work / "logs" / "streamer.log"):
                t = time.monotonic()
                while microscope.written < n_init + PARTICLES_PER_MICROGRAPH:
                    microscope.write_one()
                engine.wait_classified(microscope.written, args.timeout, "initialisation")
                print(
                    f"  {work.name}: warm-up of {microscope.written} particles, classes initialised from {n_init}, "
                    f"in {time.monotonic() - t:.0f} s",
                    flush=True,
                )
                yield engine, microscope
        finally:
            engine.client.close()


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def engine_toml(classes: int, standard: bool) -> str:
    lines = ["[classification]", f"n_classes = {classes}"]
    if not standard:
        lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in DEMO_CLASSIFICATION.items()]
    return "\n".join(lines) + "\n"


def parse_list(text: str, kind: type) -> list[Any]:
    return [kind(x) for x in text.split(",") if x.strip()]


def run(args: argparse.Namespace) -> int:
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="otf2d-stream-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rates = parse_list(args.rates, float)
    marks = parse_list(args.memory_marks, int)
    print(
        f"otf2d stream benchmark: box {args.box}, K = {args.classes}, "
        f"{'cryoSPARC defaults' if args.standard_params else 'demo classification parameters'}, "
        f"device {args.device}, engine threads {args.threads}, snapshots every {args.snapshot_every} particles / "
        f"{args.snapshot_seconds:g} s, mmap threshold "
        f"{'the engine default' if args.mmap_threshold_mb is None else f'{args.mmap_threshold_mb:g} MB'}, "
        f"{os.cpu_count()} CPU(s), "
        f"load average {load_average()}",
        flush=True,
    )
    t = time.monotonic()
    pool = work / "pool"
    optics = pool / "Extract" / "job005" / "particles.star"
    if not optics.exists() or not args.reuse_pool:
        optics = simulate_pool(pool, args.box, args.pool_micrographs)
    print(f"  pool of {args.pool_micrographs} simulated micrographs in {time.monotonic() - t:.0f} s", flush=True)
    config = work / "engine.toml"
    config.write_text(engine_toml(args.classes, args.standard_params))
    rate_rows: list[RateRow] = []
    memory_rows: list[MemoryRow] = []
    if rates:
        with pipeline(work / "rates", args, config, pool, optics) as (engine, microscope):
            for rate in rates:
                row = measure_rate(engine, microscope, rate, args.seconds, args.timeout)
                rate_rows.append(row)
                print(
                    f"  {rate:g}/s: classified {row.classified_per_s:.0f}/s, backlog {row.backlog_end}, "
                    f"p95 {_fmt(row.p95_s, '.2f')} s, load {load_average()}",
                    flush=True,
                )
    if marks:
        # a fresh engine: the rate windows have classified more than the first mark already
        with pipeline(work / "memory", args, config, pool, optics) as (engine, microscope):
            for mark in marks:
                row_m = measure_memory(engine, microscope, mark, args.max_backlog, args.timeout)
                memory_rows.append(row_m)
                print(
                    f"  {row_m.particles} classified: RSS {row_m.rss_mb:.0f} MB (peak {row_m.hwm_mb:.0f} MB), "
                    f"load {load_average()}",
                    flush=True,
                )

    if rate_rows:
        print()
        print("Sustained arrival rate and file-ready → classified latency (engine + streamer as processes)")
        print(
            "p50/p95/≤ 2 s: every particle of the window, from the engine's latency histogram (buckets 0.25, 0.5, "
            "1, 2, 5 s …, interpolated); last 5k: exact, the latest 5,000 particles when the window had drained"
        )
        header = (
            "offered /s",
            "written /s",
            "classified /s",
            "backlog at end",
            "p50 s",
            "p95 s",
            "≤ 2 s",
            "p50 / p95 s, last 5k",
            "keeps up",
        )
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---:" for _ in header) + "|")
        for r in rate_rows:
            cells = (
                f"{r.offered:g}",
                f"{r.written_per_s:.0f}",
                f"{r.classified_per_s:.0f}",
                f"{r.backlog_end}",
                _fmt(r.p50_s, ".2f"),
                _fmt(r.p95_s, ".2f"),
                _fmt(None if r.within_2s is None else 100 * r.within_2s, ".1f") + "%",
                f"{_fmt(r.recent_p50_s, '.2f')} / {_fmt(r.recent_p95_s, '.2f')}",
                "yes" if r.keeps_up else "no",
            )
            print("| " + " | ".join(cells) + " |")
        kept = [r.offered for r in rate_rows if r.keeps_up and r.p95_s is not None and r.p95_s < TARGET_P95_SECONDS]
        best = max(kept) if kept else None
        print(
            f"Highest tested rate kept up with p95 < {TARGET_P95_SECONDS:g} s: {_fmt(best, 'g')}/s "
            f"(target ≥ {TARGET_RATE:g}/s: {'met' if best is not None and best >= TARGET_RATE else 'NOT met'})"
        )
    if memory_rows:
        print()
        print("Engine resident memory")
        print(
            f"RSS: median of {SETTLE_SAMPLES} readings {SETTLE_INTERVAL_S:g} s apart after the mark's snapshot "
            "(min-max beside it); anonymous / files: of the median reading; peak: VmHWM so far"
        )
        gpu = any(not math.isnan(m.gpu_reserved_mb) for m in memory_rows)
        header = ("particles classified", "RSS MB", "min-max MB", "of which anonymous", "of which files")
        header += ("peak RSS MB", "feed s") + (("GPU allocated / reserved MB",) if gpu else ())
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---:" for _ in header) + "|")
        for m in memory_rows:
            cells = (
                f"{m.particles}",
                f"{m.rss_mb:.0f}",
                f"{m.rss_min_mb:.0f}-{m.rss_max_mb:.0f}",
                *(f"{v:.0f}" for v in (m.anon_mb, m.file_mb, m.hwm_mb, m.seconds)),
            )
            if gpu:
                cells += (f"{m.gpu_allocated_mb:.0f} / {m.gpu_reserved_mb:.0f}",)
            print("| " + " | ".join(cells) + " |")
        if len(memory_rows) >= 2:
            growth = memory_rows[-1].rss_mb / memory_rows[0].rss_mb - 1.0
            print(
                f"RSS growth from {memory_rows[0].particles} to {memory_rows[-1].particles}: {100 * growth:+.1f}% "
                f"(target within ±{100 * TARGET_MEMORY_GROWTH:.0f}%: "
                f"{'met' if abs(growth) <= TARGET_MEMORY_GROWTH else 'NOT met'})"
            )
    print(f"\nWork folder (logs and engine data of each phase): {work}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: small box, few classes, short windows")
    parser.add_argument("--rates", default=None, help="particles/s, comma-separated (default 100,250,500,1000)")
    parser.add_argument("--seconds", type=float, default=None, help="length of each rate window (default 30)")
    parser.add_argument("--box", type=int, default=None, help="particle box, px (default 64, a 256 Å field)")
    parser.add_argument("--classes", type=int, default=None, help="number of classes K (default 50)")
    parser.add_argument(
        "--memory-marks", default=None, help="classified counts to measure RSS at (default 20000,200000)"
    )
    parser.add_argument("--standard-params", action="store_true", help="cryoSPARC's default classification")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="engine device (cpu)")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads of the engine's tensor math (otf2d engine --threads; 1)"
    )
    parser.add_argument(
        "--snapshot-every", type=int, default=2000, help="engine --snapshot-every (default 2000, the engine's)"
    )
    parser.add_argument(
        "--snapshot-seconds", type=float, default=30.0, help="engine --snapshot-seconds (default 30, the engine's)"
    )
    parser.add_argument(
        "--mmap-threshold-mb",
        type=float,
        default=None,
        help="engine --mmap-threshold-mb (default: the engine's; 0: the C library's dynamic threshold)",
    )
    parser.add_argument("--pool-micrographs", type=int, default=None, help="simulated micrographs replayed (40)")
    parser.add_argument("--max-backlog", type=int, default=20000, help="most unclassified particles while feeding")
    parser.add_argument("--timeout", type=float, default=None, help="longest wait of any phase, s (default 1800)")
    parser.add_argument("--out", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--reuse-pool", action="store_true", help="keep the simulated pool of an earlier --out run")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "rates": "50,150" if quick else "100,250,500,1000",
        "seconds": 6.0 if quick else 30.0,
        "box": 32 if quick else 64,
        "classes": 6 if quick else 50,
        "memory_marks": "1000,2000" if quick else "20000,200000",
        "pool_micrographs": 6 if quick else 40,
        "timeout": 120.0 if quick else 1800.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    # A kill (SIGTERM) unwinds like Ctrl-C, so the engine and streamer (in sessions of their own,
    # out of reach of the terminal's signals) are stopped by ``child`` instead of left running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
