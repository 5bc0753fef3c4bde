"""Smoke run of ``benchmarks/stream.py --quick``: it runs the pipeline and prints both tables.

Also checks its Prometheus-style quantile against an independent computation on known buckets.
"""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "stream.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_stream", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_histogram_quantile_matches_linear_interpolation_of_the_empirical_distribution() -> None:
    bench = load_benchmark()
    rng = np.random.default_rng(3)
    values = rng.uniform(0.0, 5.0, 20000)  # uniform up to a bucket edge: interpolation within buckets is exact
    edges = [0.25, 0.5, 1.0, 2.0, 5.0, math.inf]
    buckets = {edge: float((values <= edge).sum()) for edge in edges}
    for q in (0.5, 0.95):
        assert bench.histogram_quantile(q, buckets) == pytest.approx(np.quantile(values, q), abs=0.03)
    assert bench.histogram_quantile(0.5, {}) is None
    assert bench.histogram_quantile(0.5, {1.0: 0.0, math.inf: 0.0}) is None
    text = (
        'otf2d_file_to_classified_latency_seconds_bucket{le="0.25"} 3.0\n'
        'otf2d_file_to_classified_latency_seconds_bucket{le="+Inf"} 7.0\n'
        "otf2d_file_to_classified_latency_seconds_count 7.0\n"
    )
    assert bench.parse_histogram(text, "otf2d_file_to_classified_latency_seconds") == {0.25: 3.0, math.inf: 7.0}


@pytest.mark.slow
def test_quick_benchmark_runs_and_prints_its_tables(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path / "bench")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    rates_part, memory_part = text.split("Engine resident memory")
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\d+) \| (-?\d+) \|", rates_part, re.MULTILINE)
    assert [r[0] for r in rows] == ["50", "150"], text
    for offered, written, classified, _ in rows:
        assert 0.8 * float(offered) <= float(written) <= 1.2 * float(offered)
        assert float(classified) > 0
    memory = re.findall(
        r"^\| (\d+) \| (\d+) \| (\d+)-(\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", memory_part, re.MULTILINE
    )
    assert len(memory) == 2 and int(memory[0][0]) >= 1000 and int(memory[1][0]) >= 2000, memory_part
    for _, rss, low, high, anon, files, peak, _ in memory:
        assert int(low) <= int(rss) <= int(high) <= int(peak)  # the median of readings, within their range
        assert 0 < int(anon) + int(files) <= int(rss) + 2  # RSS = anonymous + files + shmem
    assert "Highest tested rate kept up" in text and "RSS growth" in text
