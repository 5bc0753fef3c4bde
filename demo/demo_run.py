"""The pieces of ``otf2d demo``: its plan, the three child processes, watching them, the summary.

:class:`Demo` starts ``otf2d engine``, ``otf2d stream`` and ``otf2d simulate`` as child processes
(``python -m otf2d.core.cli …``, each logging to a file and in its own process session, so that Ctrl-C in
the terminal reaches the demo only), watches the pipeline through the engine's control socket
(:class:`otf2d.control.client.EngineClient`), the streamer's ``/metrics`` and the microscope's
``truth.csv``, and prints the status lines and the summary. Torch-free: the engine runs in its own
process. :mod:`otf2d.demo.demo_cmd` is the command.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

from otf2d.control.client import EngineClient, EngineRequestError, EngineTimeoutError
from otf2d.core.durable import write_bytes_atomic
from otf2d.core.durations import format_clock
from otf2d.core.errors import Otf2dError

#: Session name of the demo.
SESSION = "demo"
#: Classification parameters of the demo engine (why: the docstring of otf2d.demo.demo_cmd, `otf2d demo --help`).
DEMO_CLASSIFICATION: dict[str, Any] = {
    "force_max_over_poses": True,
    "online_em_iterations": 5,
    "batch_size_per_class": 50,
    "max_resolution_angstrom": 12.0,
    "in_plane_step_degrees": 10.0,
    "max_shift_angstrom": 16.0,
}
#: ``batch_size_per_class`` of cryoSPARC's defaults (``--standard-params``).
STANDARD_BATCH_PER_CLASS = 100
#: Particles per simulated micrograph when --micrographs is not given.
PARTICLES_PER_MICROGRAPH = 100


class DemoError(Otf2dError):
    """The demo cannot go on (a process died, the engine never answered); the message says where to look."""


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class DemoPlan:
    """What one demo run does, from the options.

    Attributes
    ----------
    particles, micrographs
        Session size.
    rate_per_minute
        Pace of the microscope, particles per minute.
    classes
        Number of 2D classes.
    """

    particles: int
    micrographs: int
    rate_per_minute: float
    classes: int
    junk_fraction: float
    preferred_orientation: bool
    snr: float
    seed: int
    device: str
    standard_params: bool
    threads: int

    @property
    def duration_seconds(self) -> float:
        """Seconds the microscope takes to write the session."""
        return 60.0 * self.particles / self.rate_per_minute

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoPlan:
        """Validate the options.

        Raises
        ------
        DemoError
            A value out of range.
        """
        if args.particles < 1:
            raise DemoError(f"--particles must be >= 1, got {args.particles}")
        if args.classes < 2:
            raise DemoError(f"--classes must be >= 2, got {args.classes}")
        if args.rate is not None:
            if not args.rate > 0:
                raise DemoError(f"--rate must be > 0 particles per minute, got {args.rate}")
            rate = float(args.rate)
        else:
            if not args.duration > 0:
                raise DemoError(f"--duration must be > 0 s, got {args.duration}")
            rate = 60.0 * args.particles / float(args.duration)
        micrographs = args.micrographs or max(1, round(args.particles / PARTICLES_PER_MICROGRAPH))
        if not 1 <= micrographs <= args.particles:
            raise DemoError(f"--micrographs must lie in 1..{args.particles}, got {micrographs}")
        if not 0.0 <= args.junk_fraction <= 1.0:
            raise DemoError(f"--junk-fraction must lie in [0, 1], got {args.junk_fraction}")
        if args.threads is not None and args.threads < 1:
            raise DemoError(f"--threads must be >= 1, got {args.threads}")
        per_class = STANDARD_BATCH_PER_CLASS if args.standard_params else DEMO_CLASSIFICATION["batch_size_per_class"]
        if args.particles < args.classes * per_class:
            raise DemoError(
                f"--particles {args.particles} is too few: the engine builds its {args.classes} classes from the "
                f"first {args.classes * per_class} particles ({per_class} per class)"
            )
        return cls(
            particles=int(args.particles),
            micrographs=int(micrographs),
            rate_per_minute=rate,
            classes=int(args.classes),
            junk_fraction=float(args.junk_fraction),
            preferred_orientation=bool(args.preferred_orientation),
            snr=float(args.snr),
            seed=int(args.seed),
            device=str(args.device),
            standard_params=bool(args.standard_params),
            threads=int(args.threads) if args.threads is not None else default_threads(),
        )

    def engine_toml(self) -> str:
        """The engine's config file: the demo's classification parameters (or only K)."""
        lines = [
            "# Written by `otf2d demo`; see `otf2d demo --help` for why these values.",
            "[classification]",
            f"n_classes = {self.classes}",
        ]
        if not self.standard_params:
            for key, value in DEMO_CLASSIFICATION.items():
                lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
        return "\n".join(lines) + "\n"


def default_threads(cpus: int | None = None) -> int:
    """Engine threads of the demo: 1 with up to 4 cores (the streamer and the microscope need the rest), else half."""
    n = (os.cpu_count() or 1) if cpus is None else cpus
    return 1 if n <= 4 else n // 2


def fresh_run_dir(base: Path, now: datetime | None = None) -> Path:
    """Create and return ``base/run-YYYYmmdd-HHMMSS`` (with ``-2``, ``-3`` … when taken)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    base.mkdir(parents=True, exist_ok=True)
    candidate = base / f"run-{stamp}"
    n = 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = base / f"run-{stamp}-{n}"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on loopback, free right now, for children that bind them later.

    All ``count`` sockets are bound at once before any is released, so the ports differ from each other
    (the kernel offers a port just closed again; the demo's servers were once given the same one).
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


# ---------------------------------------------------------------------------------------------- children


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the demo dies (even by SIGKILL); elsewhere nothing."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def log_tail(path: Path, lines: int = 12) -> str:
    """The last ``lines`` lines of a log file (empty if unreadable)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Child:
    """One child process of the demo, logging to ``log_path``."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self, cwd: Path) -> None:
        """Start it in its own session (Ctrl-C in the terminal reaches the demo only)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def returncode(self) -> int | None:
        """Exit status, ``None`` while running."""
        return None if self.process is None else self.process.poll()

    def failure(self, what: str) -> DemoError:
        """A :class:`DemoError` saying that this process ``what``, with the end of its log."""
        tail = log_tail(self.log_path)
        return DemoError(
            f"the {self.name} {what}; see its log: {self.log_path}" + (f"\n--- last lines ---\n{tail}" if tail else "")
        )

    def check_alive(self) -> None:
        """Raise :class:`DemoError` if it has exited."""
        code = self.returncode()
        if code is not None:
            raise self.failure(f"exited unexpectedly with status {code}")

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit status."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return None if proc is None else proc.returncode


# ---------------------------------------------------------------------------------------------- observation


def micrograph_sizes(particles: int, micrographs: int) -> list[int]:
    """Particles on each micrograph, as the simulator spreads them.

    (``otf2d.simulator.session.particles_per_micrograph``)
    """
    base, extra = divmod(particles, micrographs)
    return [base + (1 if m < extra else 0) for m in range(micrographs)]


def particles_written(movies_dir: Path, sizes: list[int]) -> int:
    """Particles on the micrographs whose ``_extract.star`` is in place (the simulator writes them in order)."""
    try:
        done = sum(1 for _ in movies_dir.glob("mic_*_extract.star"))
    except OSError:
        return 0
    return sum(sizes[:done])


def count_truth_rows(truth_csv: Path) -> int:
    """Particles the microscope has written: data rows of ``truth.csv`` (0 before it exists)."""
    try:
        with open(truth_csv, "rb") as handle:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return 0
    return max(0, lines - 1)


def http_get(url: str, timeout_s: float = 5.0) -> bytes | None:
    """The body of ``url`` or ``None`` (not reachable, or not 200)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bytes(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def metric_value(exposition: str, name: str) -> float | None:
    """Sum of the samples of ``name`` (any labels) in a Prometheus text exposition."""
    total: float | None = None
    for line in exposition.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            try:
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return total


@dataclass
class Observation:
    """One look at the pipeline."""

    elapsed_s: float
    written: int
    acked: int | None
    journaled: int | None
    classified: int | None
    phase: str | None
    initial_needed: int | None
    classes_populated: int | None
    n_classes: int
    junk_fraction: float | None
    verdict: str | None
    snapshot_iteration: int | None


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def status_line(obs: Observation, rate_per_s: float | None) -> str:
    """The live status line of one observation."""
    parts = [
        f"{format_clock(obs.elapsed_s):>6}",
        f"written {_n(obs.written)}",
        f"acked {_n(obs.acked)}",
        f"journaled {_n(obs.journaled)}",
        f"classified {_n(obs.classified)}",
    ]
    if obs.phase == "collecting":
        have = obs.journaled or 0
        need = obs.initial_needed or 0
        parts.append(f"initialising ({have:,}/{need:,})" if have >= need > 0 else f"collecting {have:,}/{need:,}")
    elif obs.phase not in (None, "streaming"):
        parts.append(obs.phase)
    classes = "-" if obs.classes_populated is None else f"{obs.classes_populated}/{obs.n_classes}"
    parts.append(f"classes {classes}")
    parts.append("junk -" if obs.junk_fraction is None else f"junk {100 * obs.junk_fraction:.0f}%")
    parts.append(f"verdict {obs.verdict or '-'}")
    parts.append("rate -" if rate_per_s is None else f"{rate_per_s:.0f}/s")
    return "  ".join(parts)


# ---------------------------------------------------------------------------------------------- the run


class Demo:
    """One demo run in ``run_dir`` (see the module docstring)."""

    def __init__(self, plan: DemoPlan, run_dir: Path, *, interval_s: float = 3.0, keep_serving: bool = False) -> None:
        self.plan = plan
        self.keep_serving = keep_serving
        self.run_dir = run_dir.resolve()
        self.interval_s = max(0.5, float(interval_s))
        self.microscope_dir = self.run_dir / "microscope"
        self.engine_dir = self.run_dir / "engine"
        self.logs = self.run_dir / "logs"
        self.ledger = self.run_dir / "ledger.sqlite"
        self.config_path = self.run_dir / "engine.toml"
        self.truth_csv = self.microscope_dir / "truth.csv"
        self.movies_dir = self.microscope_dir / "Extract" / "job005" / "Movies"
        self.micrograph_sizes = micrograph_sizes(plan.particles, plan.micrographs)
        self.zmq_port, self.http_port, self.streamer_metrics_port = free_ports(3)
        self.endpoint = f"tcp://127.0.0.1:{self.zmq_port}"
        self.status_url = f"http://127.0.0.1:{self.http_port}/"
        self.signal_received: int | None = None
        self.started = time.monotonic()
        python = [sys.executable, "-m", "otf2d.core.cli"]
        engine = [*python, "engine", "--listen", self.endpoint, "--data", str(self.engine_dir)]
        engine += ["--config", str(self.config_path), "--device", plan.device, "--threads", str(plan.threads)]
        engine += ["--http-port", str(self.http_port), "--snapshot-seconds", "5", "--snapshot-every", "0"]
        engine += ["--checkpoint-seconds", "30", "--keep-snapshots", "3"]
        self.engine = Child("engine", engine, self.logs / "engine.log")
        streamer = [*python, "stream", "--watch", str(self.microscope_dir), "--engine", self.endpoint]
        streamer += ["--session", SESSION, "--ledger", str(self.ledger)]
        streamer += ["--metrics-port", str(self.streamer_metrics_port), "--particles-star-interval", "30"]
        self.streamer = Child("streamer", streamer, self.logs / "streamer.log")
        microscope = [*python, "simulate", "--out", str(self.microscope_dir), "--particles", str(plan.particles)]
        microscope += ["--micrographs", str(plan.micrographs), "--rate", f"{plan.rate_per_minute:.6g}"]
        microscope += ["--junk-fraction", f"{plan.junk_fraction:g}", "--snr", f"{plan.snr:g}", "--seed", str(plan.seed)]
        if plan.preferred_orientation:
            microscope.append("--preferred-orientation")
        self.microscope = Child("virtual microscope", microscope, self.logs / "microscope.log")
        self.children = (self.microscope, self.streamer, self.engine)
        self.client: EngineClient | None = None
        self.last_status: dict[str, Any] = {}
        self.last_monitoring: dict[str, Any] | None = None

    # -------------------------------------------------------------- signals and waiting

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Remember the signal; the main loop stops at its next look."""
        self.signal_received = signum

    def sleep(self, seconds: float) -> None:
        """Sleep in short steps, returning early when a signal came."""
        deadline = time.monotonic() + seconds
        while self.signal_received is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(0.1, remaining))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rel(self, path: Path) -> str:
        """``path`` relative to the current directory when inside it, else absolute."""
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    # -------------------------------------------------------------- steps

    def start(self, startup_timeout_s: float = 120.0) -> None:
        """Write the config, start the engine and wait for it, then the streamer and the microscope."""
        plan = self.plan
        self.config_path.write_text(plan.engine_toml(), encoding="utf-8")
        self.microscope_dir.mkdir(parents=True, exist_ok=True)
        print(f"otf2d demo: working folder {self.rel(self.run_dir)}", flush=True)
        print(
            f"  virtual microscope: {plan.particles:,} particles on {plan.micrographs:,} micrographs over "
            f"{plan.duration_seconds:.0f} s ({plan.rate_per_minute / 60:.0f} particles/s), "
            f"{100 * plan.junk_fraction:.0f}% junk" + (", preferred orientation" if plan.preferred_orientation else ""),
            flush=True,
        )
        params = "cryoSPARC defaults" if plan.standard_params else "demo parameters (see --help)"
        print(
            f"  engine: {plan.classes} classes, {params}, device {plan.device}, "
            f"{plan.threads} CPU thread(s); starting…",
            flush=True,
        )
        self.engine.start(self.run_dir)
        self.wait_for_engine(startup_timeout_s)
        if self.signal_received is not None:
            return
        print(f"  status page: {self.status_url}", flush=True)
        print(f"  metrics:     {self.status_url}metrics", flush=True)
        print(f"  logs:        {self.rel(self.logs)}/", flush=True)
        self.streamer.start(self.run_dir)
        self.microscope.start(self.run_dir)

    def wait_for_engine(self, timeout_s: float = 120.0) -> None:
        """Ping until the engine answers and create the session (raises :class:`DemoError`)."""
        deadline = time.monotonic() + timeout_s
        self.client = EngineClient(self.endpoint, timeout_s=1.0)
        while self.signal_received is None:
            self.engine.check_alive()
            try:
                self.client.ping()
                break
            except EngineTimeoutError:
                if time.monotonic() > deadline:
                    raise self.engine.failure(f"did not answer within {timeout_s:.0f} s") from None
        if self.signal_received is not None:
            return
        self.client.close()
        self.client = EngineClient(self.endpoint, timeout_s=10.0)
        self.client.start_session(SESSION, {})

    def observe(self) -> Observation:
        """Look at the streamer's metrics, the engine's status and state, then the microscope's output.

        The micrographs are counted last (their ``_extract.star`` files, renamed into place after the
        stack), so that "written" is never behind what the streamer and the engine already saw.
        """
        acked = None
        body = http_get(f"http://127.0.0.1:{self.streamer_metrics_port}/metrics", 2.0)
        if body is not None:
            value = metric_value(body.decode("utf-8", "replace"), "otf2d_streamer_particles_acked_total")
            acked = None if value is None else int(value)
        session: dict[str, Any] = {}
        if self.client is not None:
            try:
                session = self.client.status(SESSION)["sessions"].get(SESSION, {})
                self.last_status = session
            except (EngineTimeoutError, EngineRequestError):
                session = {}
        monitoring = session.get("monitoring") or None
        if monitoring is not None:
            self.last_monitoring = monitoring
        counts = session.get("class_counts")
        populated = None
        if monitoring is not None:
            populated = int(monitoring.get("classes_populated", 0))
        elif counts:
            populated = sum(1 for c in counts if c > 0)
        last = session.get("last_snapshot") or {}
        return Observation(
            elapsed_s=self.elapsed(),
            written=particles_written(self.movies_dir, self.micrograph_sizes),
            acked=acked,
            journaled=session.get("particles_journaled"),
            classified=session.get("particles_classified"),
            phase=session.get("phase"),
            initial_needed=session.get("initial_particles_needed"),
            classes_populated=populated,
            n_classes=int(session.get("n_classes") or self.plan.classes),
            junk_fraction=None if monitoring is None else float(monitoring.get("junk_fraction", 0.0)),
            verdict=None if monitoring is None else str(monitoring.get("verdict")),
            snapshot_iteration=last.get("iteration"),
        )

    def check_children(self) -> None:
        """Raise :class:`DemoError` if the engine or the streamer died, or the microscope failed."""
        self.engine.check_alive()
        self.streamer.check_alive()
        code = self.microscope.returncode()
        if code not in (None, 0):
            raise self.microscope.failure(f"failed with status {code}")

    def run_session(self, final_wait_s: float) -> Observation:
        """Print status lines until the microscope is done and everything it wrote is classified.

        Raises
        ------
        DemoError
            A process died, or the last particles were not classified within ``final_wait_s``.
        """
        history: list[tuple[float, int]] = []
        finished_at: float | None = None
        obs = self.observe()
        while self.signal_received is None:
            self.check_children()
            obs = self.observe()
            classified = obs.classified or 0
            history.append((obs.elapsed_s, classified))
            history = [h for h in history if h[0] >= obs.elapsed_s - 15.0]
            rate = None
            if len(history) >= 2 and history[-1][0] > history[0][0]:
                rate = (history[-1][1] - history[0][1]) / (history[-1][0] - history[0][0])
            print(status_line(obs, rate), flush=True)
            if self.microscope.returncode() == 0:
                if finished_at is None:
                    finished_at = time.monotonic()
                    print(
                        f"  the microscope has written its {obs.written:,} particles; "
                        "waiting for the engine to classify the rest…",
                        flush=True,
                    )
                if obs.written > 0 and obs.journaled == obs.written and classified >= obs.written:
                    return obs
                if time.monotonic() - finished_at > final_wait_s:
                    raise DemoError(
                        f"only {classified:,} of {obs.written:,} particles were classified within "
                        f"{final_wait_s:.0f} s after the microscope stopped (the engine is too slow for this "
                        f"rate: try a lower --rate or fewer --classes); see {self.engine.log_path}"
                    )
            self.sleep(self.interval_s)
        return obs

    def final_snapshot(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Ask for a snapshot now and wait until it is written; returns its status record."""
        if self.client is None:
            raise DemoError("no connection to the engine")
        result = self.client.snapshot(SESSION)
        wanted = int(result["iteration"])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.signal_received is not None:
                return {}
            self.engine.check_alive()
            try:
                session = self.client.status(SESSION)["sessions"][SESSION]
            except EngineTimeoutError:
                continue
            written = session.get("last_snapshot")
            if written is not None and int(written["iteration"]) >= wanted:
                self.last_status = session
                if session.get("monitoring"):
                    self.last_monitoring = session["monitoring"]
                return dict(written)
            self.sleep(0.25)
        raise DemoError(
            f"the final snapshot {wanted} was not written within {timeout_s:.0f} s; see {self.engine.log_path}"
        )

    def save_state(self) -> Path | None:
        """Save the status server's ``/status.json`` into the run folder; its path (``None`` if unreachable)."""
        body = http_get(f"{self.status_url}status.json", 10.0)
        if body is None:
            return None
        return write_bytes_atomic(self.run_dir / "status.json", body)

    def summary(self, obs: Observation, snapshot_record: dict[str, Any], state_path: Path | None) -> str:
        """The closing summary: counts, verdict and reasons, where every output is."""
        lines = [""]
        lines.append(
            f"otf2d demo finished in {format_clock(self.elapsed())}: {obs.written:,} particles written by the "
            f"microscope, {_n(obs.acked)} acknowledged to the streamer, {_n(obs.journaled)} journaled and "
            f"{_n(obs.classified)} classified by the engine."
        )
        state: dict[str, Any] = {}
        if state_path is not None:
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(state_path.read_text(encoding="utf-8"))["sessions"].get(SESSION, {})
        verdict = state.get("verdict") or {}
        monitoring = self.last_monitoring or {}
        verdict_state = verdict.get("state") or monitoring.get("verdict") or "unknown"
        confidence = verdict.get("confidence", monitoring.get("confidence"))
        reasons = verdict.get("reasons") or monitoring.get("reasons") or []
        conf = f" (confidence {100 * float(confidence):.0f}%)" if confidence is not None else ""
        lines.append(f"Verdict: {verdict_state.upper()}{conf}")
        lines.extend(f"  - {reason}" for reason in reasons)
        if state:
            junk_classes = int(state.get("junk_classes", 0))
            lines.append(
                f"Classes: {state.get('n_classes')} ({junk_classes} flagged junk, "
                f"{100 * float(state.get('junk_fraction', 0)):.0f}% of the particles), "
                f"{state.get('views', {}).get('n_views', '?')} distinct views, "
                f"{int(state.get('good_particles', 0)):,} good particles"
            )
        snap_dir = Path(snapshot_record.get("directory", self.engine_dir))
        files = self.snapshot_files(snap_dir)
        lines.append("")
        lines.append(f"Outputs (in {self.rel(self.run_dir)}):")
        lines.append(f"  snapshot {snapshot_record.get('iteration')}: {self.rel(snap_dir)}/")
        for role, label in (
            (("data_star", "model_star", "classes_mrcs"), "RELION Class2D"),
            (("particles_cs", "class_averages_cs", "particles_csg", "class_averages_csg"), "cryoSPARC"),
            (("gallery_png",), "gallery PNG"),
        ):
            names = [files[r] for r in role if r in files]
            if names:
                lines.append(f"    {label + ':':<16}{', '.join(names)}")
        if state_path is not None:
            lines.append(f"  monitoring state (verdict, classes, views): {self.rel(state_path)}")
        lines.append(f"  ground truth:        {self.rel(self.truth_csv)}")
        lines.append(
            f"  particles (RELION):  {self.rel(self.microscope_dir / 'Extract' / 'job005' / 'particles.star')}"
        )
        lines.append(f"  streamer ledger:     {self.rel(self.ledger)}")
        lines.append(f"  engine data:         {self.rel(self.engine_dir)}/ (journal, checkpoint, snapshots)")
        lines.append(f"  engine config:       {self.rel(self.config_path)}")
        lines.append(
            "  logs:                "
            + ", ".join(self.rel(c.log_path) for c in (self.engine, self.streamer, self.microscope))
        )
        lines.append(
            f"Status page: {self.status_url} (metrics: {self.status_url}metrics)"
            + ("" if self.keep_serving else "; it stops with the engine now (--keep-serving keeps it up)")
        )
        return "\n".join(lines)

    def snapshot_files(self, snap_dir: Path) -> dict[str, str]:
        """File names of the newest snapshot by role, from ``latest.json``."""
        try:
            record = json.loads((snap_dir / "latest.json").read_text(encoding="utf-8"))
            return {str(k): str(v) for k, v in record.get("files", {}).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def stop_all(self) -> None:
        """Stop the microscope, the streamer, then the engine (it drains and checkpoints)."""
        if self.client is not None:
            self.client.close()
            self.client = None
        self.microscope.stop(10.0)
        self.streamer.stop(20.0)
        self.engine.stop(60.0)


__all__ = [
    "DEMO_CLASSIFICATION",
    "PARTICLES_PER_MICROGRAPH",
    "SESSION",
    "STANDARD_BATCH_PER_CLASS",
    "Child",
    "Demo",
    "DemoError",
    "DemoPlan",
    "Observation",
    "count_truth_rows",
    "default_threads",
    "free_ports",
    "fresh_run_dir",
    "http_get",
    "log_tail",
    "metric_value",
    "micrograph_sizes",
    "particles_written",
    "status_line",
]
