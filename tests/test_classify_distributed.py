"""``otf2d classify`` data-parallel through torch.distributed (gloo, real processes on loopback):
2 processes give the 1-process result up to the order of floating-point sums, rank 0 alone writes,
and wrong process counts or torchrun environments are refused clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from ports import free_port

from otf2d.core.cli import main as otf2d
from otf2d.core.errors import ConfigError
from otf2d.engine.resources.ranks import RankEnv, rank_env
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.session import SessionSummary, simulate_session

#: Small and fast: 4 classes, 3 online iterations of 80 particles, one full pass, coarse sampling.
FAST = [
    "--classes", "4", "--batch-per-class", "20", "--online-em-iterations", "3",
    "--in-plane-step", "15", "--max-shift", "8", "--threads", "1", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> SessionSummary:
    out = tmp_path_factory.mktemp("distributed_session")
    return simulate_session(SimulationConfig(n_particles=240, n_micrographs=3, snr=0.2, seed=5), out)


@pytest.fixture(scope="module")
def one_process(session: SessionSummary) -> Path:
    out = session.out_dir / "one"
    assert otf2d(["classify", str(session.particles_star), "--out", str(out), *FAST]) == 0
    return out


@pytest.fixture(scope="module")
def two_processes(session: SessionSummary) -> Path:
    out = session.out_dir / "two"
    os.environ["MASTER_PORT"] = str(free_port())  # the launcher's rendezvous port
    try:
        assert otf2d(["classify", str(session.particles_star), "--out", str(out), *FAST, "--nproc", "2"]) == 0
    finally:
        del os.environ["MASTER_PORT"]
    return out


def _only(out: Path, suffix: str) -> Path:
    found = sorted(out.glob(f"run_it*{suffix}"))
    assert len(found) == 1, found
    return found[0]


def _particles(out: Path) -> object:
    return starfile.read(_only(out, "_data.star"))["particles"]


def test_two_processes_give_the_one_process_classes_and_assignments(one_process: Path, two_processes: Path) -> None:
    one, two = _particles(one_process), _particles(two_processes)
    assert list(one["rlnImageName"]) == list(two["rlnImageName"])  # every particle, in table order
    same = np.mean(one["rlnClassNumber"].to_numpy() == two["rlnClassNumber"].to_numpy())
    assert same >= 0.99
    a = mrcfile.read(_only(one_process, "_classes.mrcs")).astype(np.float64)
    b = mrcfile.read(_only(two_processes, "_classes.mrcs")).astype(np.float64)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    assert np.abs(a).max() > 0


def _run_ranks(commands: list[list[str]], logs: Path, timeout: float = 300.0) -> list[str]:
    """Run one command per rank with torchrun's environment; each rank's stdout (all must exit 0)."""
    port = str(free_port())
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank, cmd in enumerate(commands):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(len(commands))}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
        with (logs / f"{rank}.out").open("w") as out, (logs / f"{rank}.err").open("w") as err:
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=err))
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    errors = [(logs / f"{rank}.err").read_text() for rank in range(len(commands))]
    assert codes == [0] * len(commands), errors
    return [(logs / f"{rank}.out").read_text() for rank in range(len(commands))]


def test_rank_0_alone_writes_under_torchruns_environment(session: SessionSummary, two_processes: Path) -> None:
    """Two ranks started as torchrun starts them (environment variables); rank 1 is told another --out."""
    outs = [session.out_dir / "rank0", session.out_dir / "rank1"]
    base = [sys.executable, "-m", "otf2d.core.cli", "classify", str(session.particles_star)]
    printed = _run_ranks([[*base, "--out", str(out), *FAST] for out in outs], session.out_dir / "rank_logs")
    assert "classified 240 particles" in printed[0]
    assert printed[1] == ""  # rank 1 prints nothing and writes nothing
    assert not outs[1].exists()
    # the same ranks as --nproc 2: the same classes, bit for bit
    a = mrcfile.read(_only(outs[0], "_classes.mrcs"))
    assert np.array_equal(a, mrcfile.read(_only(two_processes, "_classes.mrcs")))


def test_nproc_below_one_is_refused(session: SessionSummary, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        otf2d(["classify", str(session.particles_star), "--out", str(session.out_dir / "x"), "--nproc", "0"])
    assert exc.value.code == 2
    assert "--nproc must be >= 1, got 0" in capsys.readouterr().err


def test_more_processes_than_particles_is_refused_before_starting_any(
    session: SessionSummary, capsys: pytest.CaptureFixture[str]
) -> None:
    out = session.out_dir / "too_many"
    assert otf2d(["classify", str(session.particles_star), "--out", str(out), *FAST, "--nproc", "241"]) == 2
    err = capsys.readouterr().err
    assert "--nproc 241 for 240 particles" in err
    assert str(session.particles_star) in err
    assert not out.exists()


def test_nproc_that_contradicts_torchruns_world_size_is_refused(
    session: SessionSummary, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    out = session.out_dir / "contradicts"
    assert otf2d(["classify", str(session.particles_star), "--out", str(out), *FAST, "--nproc", "3"]) == 2
    assert "--nproc 3 in a run of WORLD_SIZE=2" in capsys.readouterr().err


def test_rank_environment_is_read_and_checked() -> None:
    base = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert rank_env({}) is None
    assert rank_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert rank_env({**base, "WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == RankEnv(3, 4, 1)
    bad = [
        ({**base, "WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE='two' is not an integer"),
        ({**base, "WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is outside 0..1"),
        ({**base, "WORLD_SIZE": "2"}, "RANK is not set"),
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "1"}, "MASTER_ADDR is not set"),
        ({**base, "WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE must be >= 1"),
    ]
    for env, message in bad:
        with pytest.raises(ConfigError, match=message):
            rank_env(env)
