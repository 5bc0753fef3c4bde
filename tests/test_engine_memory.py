"""otf2d.engine.resources.memory (resident size from /proc, GPU memory of torch), its /metrics gauges and its status
text."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import generate_latest

from otf2d.control.status_cmd import memory_text
from otf2d.engine.resources.memory import (
    PROC_STATUS,
    device_memory_bytes,
    memory_status,
    proc_status_bytes,
    resident_memory_bytes,
)
from otf2d.engine.serving.metrics import EngineMetrics

STATUS_SAMPLE = """Name:\tpython
VmPeak:\t 9000000 kB
VmHWM:\t  912345 kB
VmRSS:\t  543210 kB
RssAnon:\t  400000 kB
Threads:\t8
"""


def test_resident_memory_is_read_from_the_status_file(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(STATUS_SAMPLE, encoding="ascii")
    assert resident_memory_bytes(status) == {"resident_bytes": 543210 * 1024, "peak_resident_bytes": 912345 * 1024}
    assert proc_status_bytes(status, ("RssAnon", "Threads", "VmSwap")) == {"RssAnon": 400000 * 1024}  # kB only
    status.write_text("Name:\tpython\nVmRSS:\tgarbage kB\n", encoding="ascii")
    assert resident_memory_bytes(status) == {}
    assert resident_memory_bytes(tmp_path / "missing") == {}


@pytest.mark.skipif(not PROC_STATUS.exists(), reason="no /proc on this system")
def test_resident_memory_follows_what_the_process_touches() -> None:
    # a fresh anonymous mapping: np.ones could be served from heap that malloc kept resident after
    # an earlier test freed it (then the resident size does not move, as CI once saw)
    size = 64 * 2**20
    before = resident_memory_bytes()["resident_bytes"]
    with mmap.mmap(-1, size) as block:
        np.frombuffer(block, dtype=np.uint8)[:: mmap.PAGESIZE] = 1  # every page touched
        during = resident_memory_bytes()
    assert during["resident_bytes"] - before > 48 * 2**20
    assert during["peak_resident_bytes"] >= during["resident_bytes"]


def test_a_cpu_engine_reports_no_device_memory() -> None:
    assert device_memory_bytes(torch.device("cpu")) == {}
    status = memory_status(torch.device("cpu"))
    assert not any(key.startswith("device_") for key in status)
    metrics = EngineMetrics()
    metrics.bind_device_memory(lambda: device_memory_bytes(torch.device("cpu")))
    text = generate_latest(metrics.registry).decode()
    assert "otf2d_device_memory_bytes{" not in text
    if PROC_STATUS.exists():
        assert "process_resident_memory_bytes" in text


def test_device_memory_gauges_read_at_scrape_time() -> None:
    held = {"allocated": 1000, "reserved": 4096}
    metrics = EngineMetrics()
    metrics.bind_device_memory(lambda: dict(held))
    held["allocated"] = 3000
    text = generate_latest(metrics.registry).decode()
    assert 'otf2d_device_memory_bytes{kind="allocated"} 3000.0' in text
    assert 'otf2d_device_memory_bytes{kind="reserved"} 4096.0' in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_memory_counts_a_tensor() -> None:
    device = torch.device("cuda")
    before = device_memory_bytes(device)["allocated"]
    block = torch.empty(32 * 2**20, dtype=torch.uint8, device=device)
    after = device_memory_bytes(device)
    assert after["allocated"] - before >= 32 * 2**20
    assert after["reserved"] >= after["allocated"]
    assert memory_status(device)["device_reserved_bytes"] >= after["allocated"]
    del block


def test_status_line_text() -> None:
    assert memory_text({}) == ""
    assert memory_text({"resident_bytes": 580e6, "peak_resident_bytes": 865e6}) == ", memory 580 MB (peak 865 MB)"
    text = memory_text({"resident_bytes": 1.76e9, "device_reserved_bytes": 2.31e9})
    assert text == ", memory 1.8 GB, GPU 2.3 GB reserved"
