"""Smoke tests of ``benchmarks/classify.py --quick --skip-relion`` and ``benchmarks/fold_memory.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script: str, *args: str) -> str:
    """Standard output of ``benchmarks/<script> args`` (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=BENCHMARKS.parent,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_classify_benchmark_quick_runs_and_prints_one_table(tmp_path: Path) -> None:
    out = run_benchmark("classify.py", "--quick", "--skip-relion", "--out", str(tmp_path), "--threads", "2")
    lines = out.splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith("part ")]
    assert len(header) == 1  # one table
    rows = [line for line in lines if line.startswith(("throughput ", "vs RELION "))]
    throughput = [r for r in rows if r.startswith("throughput ")]
    assert len(throughput) == 6  # 2 configurations x (fp32, bf16, bf16-native) on the CPU
    assert all(r.split()[4] in ("fp32", "bf16", "bf16-native") for r in throughput)
    for r in throughput:
        rate = r.split()[7].replace(",", "")
        assert float(rate) > 0
    compare = [r for r in rows if r.startswith("vs RELION ")]
    assert len(compare) == 2  # cryoSPARC's default for K <= 20 (marginalise) and force-max
    assert all("otf2d classify" in r for r in compare)
    assert "default O-EM" in compare[0] and "O-EM force-max" in compare[1]
    assert not any("relion_refine" in r for r in rows)  # --skip-relion
    assert any(line.startswith("target: bf16 agrees") for line in lines)
    assert (tmp_path / "session" / "truth.csv").is_file()


@pytest.mark.slow
def test_fold_memory_benchmark_prints_its_table() -> None:
    out = run_benchmark("fold_memory.py", "--device", "cpu", "--steps", "6", "--every", "3")
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [3, 6]
    folded = [int(r.split("|")[2]) for r in rows]
    assert 3 * 20 <= folded[0] < folded[1] <= 6 * 2048
    assert all(float(r.split("|")[4]) > 50 for r in rows)  # RSS MB of a process holding torch
    assert "RSS MB from the first reading to the last:" in out


def test_fuzz_wire_benchmark_finds_no_failure() -> None:
    out = run_benchmark("fuzz_wire.py", "--cases", "3000", "--seed", "5", "--strict")
    assert out.splitlines()[-1].startswith("failures: 0 of 3000 cases")


@pytest.mark.slow
def test_realistic_benchmark_prints_its_table(shared_data: Path, tmp_path: Path) -> None:
    out = run_benchmark(
        "realistic.py",
        "--particles", "240", "--classes", "4", "--seeds", "1", "--skip-relion", "--out", str(tmp_path),
        "--otf2d-args=--per-particle-scale-iterations 2",
    )  # fmt: skip
    assert "otf2d classify with --per-particle-scale-iterations 2;" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for metric in ("good classes", "empty classes", "view spread deg", "selection F1", "wall s"):
        assert metric in rows, out
    cells = [c.strip() for c in rows["wall s"].split("|")[2:-2]]
    assert cells and float(cells[0]) > 0
    verdict = [c.strip() for c in rows["verdict"].split("|")[2:-1]]
    assert verdict[0] in ("pending", "collect", "marginal", "abandon"), out
    assert verdict[1] in (f"{n}/1 collect" for n in (0, 1)) and verdict[2] == "collect", out
    share = float(rows["largest view share"].split("|")[2])
    assert 0 < share <= 1, out
    assert (tmp_path / "seed1" / "truth.csv").is_file()


@pytest.mark.slow
def test_stream_vs_batch_benchmark_prints_its_table_and_verdicts(shared_data: Path, tmp_path: Path) -> None:
    out = run_benchmark(
        "stream_vs_batch.py",
        "--particles", "400", "--classes", "4", "--batch-per-class", "25", "--seeds", "1", "--out", str(tmp_path),
    )  # fmt: skip
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    header = [c.strip() for c in rows["metric"].split("|")[2:-1]]
    assert header == ["streaming s1", "stream+idle s1", "classify s1"], out
    for metric in ("good classes", "view spread deg", "junk isolation", "first classes s", "idle s", "wall s"):
        assert metric in rows, out
    idle = [c.strip() for c in rows["idle s"].split("|")[2:-1]]
    assert idle[0] == "" and float(idle[1]) > 0 and idle[2] == ""
    verdicts = [line for line in out.splitlines() if line.startswith("verdict, ")]
    assert [v.split(":")[0] for v in verdicts] == ["verdict, streaming s1", "verdict, stream+idle s1"], out
