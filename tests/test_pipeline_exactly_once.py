"""End to end with real processes and sockets: virtual microscope → streamer → engine, every particle once.

The simulator writes 20 micrographs at a steady pace while the streamer watches its folder and the
engine (its own process, ZeroMQ on loopback) classifies. Afterwards the counts of every stage must
equal what the simulator wrote — the streamer ledger's acknowledged particles, the engine's
journaled and classified counts and its counters on ``/metrics``, the rows of the snapshot's
``_data.star`` — and the image names in the snapshot must be exactly those of ``truth.csv``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from pipeline_helpers import (
    PIPELINE_PARAMS,
    describe_failure,
    engine_argv,
    engine_ports,
    http_text,
    samples,
    simulate_argv,
    started,
    stream_argv,
    wait_for_engine,
    wait_until,
)

from otf2d.control.client import EngineClient
from otf2d.streamer.ledger import Ledger

pytestmark = pytest.mark.slow

SESSION = "pipe"
PARTICLES = 400
MICROGRAPHS = 20
#: particles per minute: the 20 micrographs arrive over ~8 s, while everything runs
RATE_PER_MINUTE = 3000


def test_every_simulated_particle_is_classified_exactly_once(tmp_path: Path) -> None:
    ports = engine_ports()
    logs = tmp_path / "logs"
    sim = tmp_path / "microscope"
    sim.mkdir()
    ledger_path = tmp_path / "ledger.sqlite"
    engine_cmd = engine_argv(tmp_path / "data", ports, "--snapshot-seconds", "0", "--snapshot-every", "0")
    with started("engine", engine_cmd, logs) as engine:
        wait_for_engine(ports.endpoint, engine)
        with EngineClient(ports.endpoint, timeout_s=10.0) as client:
            client.start_session(SESSION, PIPELINE_PARAMS)
            stream_cmd = stream_argv(sim, ports.endpoint, SESSION, ledger_path)
            with started("streamer", stream_cmd, logs) as streamer:
                begin = time.monotonic()
                microscope_cmd = simulate_argv(sim, PARTICLES, MICROGRAPHS, "--rate", str(RATE_PER_MINUTE))
                with started("microscope", microscope_cmd, logs) as microscope:
                    assert microscope.process.wait(60) == 0, describe_failure(microscope)
                writing_s = time.monotonic() - begin
                # the micrographs really arrived over time, while the streamer and the engine ran
                assert writing_s >= 0.7 * 60.0 * PARTICLES / RATE_PER_MINUTE

                def done() -> dict[str, object] | None:
                    s = client.status(SESSION)["sessions"][SESSION]
                    return (
                        s if s["particles_classified"] >= PARTICLES and s["particles_journaled"] >= PARTICLES else None
                    )

                try:
                    status = wait_until(done, 60.0, "every particle classified", interval_s=0.5)
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}\n{describe_failure(engine, streamer)}") from exc
                assert streamer.alive(), describe_failure(streamer)
                assert streamer.terminate() == 0, describe_failure(streamer)
            assert status["particles_journaled"] == PARTICLES
            assert status["particles_classified"] == PARTICLES
            assert status["duplicates"] == 0

            ledger = Ledger(ledger_path, session=SESSION)
            try:
                counts = ledger.counts()
                dead = ledger.dead_letters()
            finally:
                ledger.close()
            assert counts["particles"]["acked"] == PARTICLES, counts
            assert sum(counts["particles"].values()) == PARTICLES, counts
            assert counts["particle_keys"] == PARTICLES
            assert dead == []

            metrics = samples(http_text(f"{ports.url}/metrics"))
            assert metrics["otf2d_particles_received_total"] == PARTICLES
            assert metrics["otf2d_particles_classified_total"] == PARTICLES
            assert metrics['otf2d_particles_rejected_total{reason="duplicate"}'] == 0
            assert metrics["otf2d_file_to_classified_latency_seconds_count"] == PARTICLES

            iteration = int(client.snapshot(SESSION)["iteration"])
            wait_until(
                lambda: (
                    (client.status(SESSION)["sessions"][SESSION].get("last_snapshot") or {}).get("iteration", -1)
                    >= iteration
                ),
                60.0,
                "the snapshot",
                interval_s=0.25,
            )
        assert engine.terminate() == 0, describe_failure(engine)

    snapshots = tmp_path / "data" / "sessions" / SESSION / "snapshots"
    latest = json.loads((snapshots / "latest.json").read_text())
    assert latest["iteration"] == iteration
    data = starfile.read(snapshots / latest["files"]["data_star"], always_dict=True)["particles"]
    truth = pd.read_csv(sim / "truth.csv")
    assert len(truth) == PARTICLES
    assert len(data) == PARTICLES
    names = list(data["rlnImageName"])
    assert len(set(names)) == PARTICLES, "a particle appears twice in the snapshot"
    assert set(names) == set(truth["rlnImageName"])
    assert set(data["rlnClassNumber"]) <= set(range(1, PIPELINE_PARAMS["n_classes"] + 1))

    # Issue 14: the extraction's own columns travel streamer → wire → journal → snapshot.
    extracted = pd.concat(
        [starfile.read(p, always_dict=True)["particles"] for p in sorted(sim.rglob("particles.star"))]
    ).drop_duplicates("rlnImageName")
    by_name = extracted.set_index("rlnImageName").loc[names]
    carried = ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnCtfMaxResolution", "rlnCtfFigureOfMerit")
    for label in carried:
        assert label in data.columns, label
        assert list(data[label]) == list(by_name[label]), label
    optics = starfile.read(snapshots / latest["files"]["data_star"], always_dict=True)["optics"]
    assert "rlnMicrographOriginalPixelSize" in optics.columns
    cs = np.load(snapshots / latest["files"]["particles_cs"], allow_pickle=False)
    assert "location/micrograph_path" in (cs.dtype.names or ())
    binary = shutil.which("relion_star_handler")
    if binary is not None:  # RELION's own duplicate removal needs the coordinates carried above
        data_star = str(snapshots / latest["files"]["data_star"])
        done = subprocess.run(
            [binary, "--i", data_star, "--o", str(tmp_path / "nodup.star"), "--remove_duplicates", "30"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert 0 < len(starfile.read(tmp_path / "nodup.star", always_dict=True)["particles"]) <= PARTICLES
    image_handler = shutil.which("relion_image_handler")
    if image_handler is not None:  # the engine snapshot's classes stack, image by image, with its pixel size
        classes = snapshots / latest["files"]["classes_mrcs"]
        done = subprocess.run(
            [image_handler, "--i", str(classes), "--stats"], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        with mrcfile.open(classes) as mrc:
            n_images, pixel = mrc.data.shape[0], float(mrc.voxel_size.x)
        angpix = re.findall(r"^\d{6}@.*angpix = (\S+)$", done.stdout, flags=re.MULTILINE)
        assert len(angpix) == n_images and all(float(a) == pytest.approx(pixel, rel=1e-4) for a in angpix)
