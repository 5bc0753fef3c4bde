"""otf2d.selection.templates and ``otf2d templates``: the low-pass, the re-centring, the MRC stack (pixel size,
labels), and the sign of the templates against clean projections of the simulator's map."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from selection_session import SESSION, ClassifiedSession, classified_session
from snapshot_factory import make_snapshot

from otf2d.core.cli import main as otf2d
from otf2d.core.errors import InputError
from otf2d.monitoring.quality import JUNK_SCORE_THRESHOLD
from otf2d.monitoring.snapshots.reader import read_snapshot
from otf2d.selection.templates import (
    SIGN_CONVENTION,
    header_labels,
    make_templates,
    raised_cosine_lowpass,
    write_templates_mrcs,
)
from otf2d.simulator.particles import prepare_simulation
from otf2d.simulator.projection import project
from otf2d.simulator.scoring import align_to_reference
from otf2d.simulator.views import PREFERRED_VIEWS_DEGREES


@pytest.fixture(scope="session")
def classified(tmp_path_factory: pytest.TempPathFactory) -> ClassifiedSession:
    return classified_session(tmp_path_factory.getbasetemp() / "selection_session")


def _wave(box: int, k: int, angle_degrees: float = 0.0) -> np.ndarray:
    """A plane wave with ``k`` periods across the box along ``angle_degrees`` (k integer along x or y only)."""
    y, x = np.mgrid[:box, :box].astype(np.float64)
    a = np.radians(angle_degrees)
    return np.cos(2 * np.pi * k * (np.cos(a) * x + np.sin(a) * y) / box)


def test_lowpass_passes_halves_and_stops_plane_waves() -> None:
    box, px = 64, 4.0
    lowpass = box * px / 12  # the cut-off falls exactly on 12 periods per box (21.33 Å)
    for k, angle, expected in ((6, 0.0, 1.0), (10, 90.0, 1.0), (12, 0.0, 0.5), (12, 90.0, 0.5), (14, 0.0, 0.0)):
        wave = _wave(box, k, angle)
        out = raised_cosine_lowpass(wave, px, lowpass)
        amplitude = float((out * wave).sum() / (wave * wave).sum())  # projection onto the wave, float64
        assert amplitude == pytest.approx(expected, abs=1e-9), (k, angle)
    # a resolution in the edge: the float64 value of the raised cosine at that frequency
    edge = 1.0 / lowpass
    k = 13
    t = np.clip((k / (box * px) - 0.9 * edge) / (0.2 * edge), 0.0, 1.0)
    amplitude = float((raised_cosine_lowpass(_wave(box, k), px, lowpass) * _wave(box, k)).sum() / (box * box / 2))
    assert amplitude == pytest.approx(0.5 * (1 + np.cos(np.pi * t)), abs=1e-9)
    with pytest.raises(InputError, match="Nyquist"):
        raised_cosine_lowpass(_wave(box, 3), px, 7.9)


def _blobs(offsets_yx: list[tuple[float, float]], box: int = 32) -> np.ndarray:
    y, x = np.mgrid[:box, :box].astype(np.float64)
    c = box // 2
    return np.stack(
        [
            np.exp(-((y - c - dy) ** 2 + (x - c - dx) ** 2) / (2 * 2.5**2))
            + 0.6 * np.exp(-((y - c - dy - 3) ** 2 + (x - c - dx + 1) ** 2) / 4.0)
            for dy, dx in offsets_yx
        ]
    ).astype(np.float32)


def _centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    w = np.maximum(image, 0.0)
    y, x = np.mgrid[: image.shape[0], : image.shape[1]]
    return float((w * y).sum() / w.sum()), float((w * x).sum() / w.sum())


def test_templates_are_centred_to_a_fraction_of_a_pixel() -> None:
    offsets = [(3.4, -2.7), (-1.25, 0.6), (0.0, 0.0), (2.2, 2.9), (-3.1, -0.4), (0.5, -3.3)]
    snapshot = make_snapshot(averages=_blobs(offsets), parameters={})
    templates = make_templates(snapshot, [1, 2, 4, 5, 6], lowpass_angstrom=None)
    assert templates.class_numbers == [1, 2, 4, 5, 6]
    assert templates.images.dtype == np.float32 and templates.images.shape == (5, 32, 32)
    for image in templates.images:
        cy, cx = _centre_of_mass(image.astype(np.float64) * (image > 0.05 * image.max()))
        assert abs(cy - 16) < 0.1 and abs(cx - 16) < 0.1
    for shift, (dy, dx) in zip(templates.shifts_yx, [offsets[i] for i in (0, 1, 3, 4, 5)], strict=True):
        assert shift[0] == pytest.approx(-dy, abs=0.5) and shift[1] == pytest.approx(-dx, abs=0.5)
    # protein positive; averages showing protein dark give the same templates with --invert
    assert templates.images[0].max() > 0.5 and templates.images[0].min() > -0.05
    dark = make_snapshot(averages=-_blobs(offsets), parameters={})
    inverted = make_templates(dark, [1, 2, 4, 5, 6], lowpass_angstrom=None, invert=True)
    np.testing.assert_allclose(inverted.images, templates.images, atol=1e-6)
    with pytest.raises(InputError, match=r"\[9\] do not exist"):
        make_templates(snapshot, [1, 9])


def test_mrc_stack_has_pixel_size_and_labels(tmp_path: Path) -> None:
    snapshot = make_snapshot()
    templates = make_templates(snapshot, [1, 2], lowpass_angstrom=12.0)
    labels = header_labels(templates, "of snapshot 1")
    assert all(len(label) <= 80 and label.isascii() for label in labels)
    path = write_templates_mrcs(tmp_path / "refs" / "templates.mrcs", templates, labels=labels)
    with mrcfile.open(path) as mrc:
        np.testing.assert_array_equal(mrc.data, templates.images)
        assert float(mrc.voxel_size.x) == pytest.approx(snapshot.pixel_size_angstrom)
        assert mrc.is_image_stack()
        text = [bytes(label).decode("ascii").strip() for label in mrc.header.label[: int(mrc.header.nlabl)]]
    assert f"sign: {SIGN_CONVENTION}" in text and any("low-pass 12 A" in t for t in text)
    assert not list(path.parent.glob(".*tmp"))


@pytest.mark.slow
def test_templates_command_on_a_classified_session(
    classified: ClassifiedSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The templates open with mrcfile at the session's pixel size, and their sign is that of the
    map: the template of the main view correlates positively with a clean projection of it."""
    out = tmp_path / "templates.mrcs"
    assert otf2d(["templates", str(classified.run_dir), "--out", str(out), "--auto", "--min-particles", "20"]) == 0
    summary = capsys.readouterr().out
    assert "protein white" in summary and str(out) in summary
    snapshot = read_snapshot(classified.run_dir).snapshot
    with mrcfile.open(out) as mrc:
        stack = np.asarray(mrc.data, dtype=np.float64)
        assert float(mrc.voxel_size.x) == pytest.approx(snapshot.pixel_size_angstrom) == pytest.approx(4.0)
        labels = b"".join(bytes(x) for x in mrc.header.label).decode("ascii")
    assert "protein white" in labels
    match = re.search(r"classes ([\d,]+)", labels)
    assert match is not None
    numbers = [int(c) for c in match.group(1).split(",")]
    assert stack.shape == (len(numbers), 64, 64)
    # the largest class the junk score keeps is the main preferred view (the largest class of all
    # may be the aggregated junk): compare its template with a clean projection of the map
    assert snapshot.junk_score is not None
    kept_counts = np.where(snapshot.junk_score <= JUNK_SCORE_THRESHOLD, snapshot.particle_counts, -1)
    assert numbers[0] == int(np.argmax(kept_counts)) + 1
    setup = prepare_simulation(SESSION)
    rot, tilt = PREFERRED_VIEWS_DEGREES[0]
    reference = project(setup.spectrum, np.array([rot]), np.array([tilt]), 0.0, 64, 4.0)[0]
    radius = setup.particle_diameter_angstrom / 4.0 / 2
    corr, _ = align_to_reference(stack[0], reference, step_degrees=5.0, radius_pixels=radius)
    inverted, _ = align_to_reference(-stack[0], reference, step_degrees=5.0, radius_pixels=radius)
    print(f"template 1 vs clean projection of the main view: r = {corr:.3f} (inverted: {inverted:.3f})")
    assert corr >= 0.6 and corr > inverted + 0.5


@pytest.mark.slow
@pytest.mark.relion
def test_relion_reads_the_templates_with_their_pixel_size(classified: ClassifiedSession, tmp_path: Path) -> None:
    binary = shutil.which("relion_image_handler")
    if binary is None:
        pytest.skip("relion_image_handler not on PATH (Debian's relion package is not installed)")
    out = tmp_path / "templates.mrcs"
    assert otf2d(["templates", str(classified.run_dir), "--out", str(out), "--classes", "1,3"]) == 0
    done = subprocess.run(
        [binary, "--i", str(out), "--stats"], capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = re.findall(r"^(\d{6})@.*avg= (\S+) .*angpix = (\S+)$", done.stdout, flags=re.MULTILINE)
    assert [int(r[0]) for r in rows] == [1, 2]
    with mrcfile.open(out) as mrc:
        for (_, avg, angpix), image in zip(rows, mrc.data, strict=True):
            assert float(angpix) == pytest.approx(4.0)
            assert float(avg) == pytest.approx(float(np.mean(image, dtype=np.float64)), abs=1e-5)


def test_a_lowpass_beyond_nyquist_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project_dir = tmp_path / "project"
    from otf2d.monitoring.snapshots import write_snapshot

    write_snapshot(make_snapshot(), project_dir / "Class2D" / "a", project_dir=project_dir)
    code = otf2d(["templates", str(project_dir / "Class2D" / "a"), "--out", str(tmp_path / "t.mrcs")])
    assert code == 2  # make_snapshot's patterns all score as junk: no class left
    assert "no class left" in capsys.readouterr().err
    args = ["templates", str(project_dir / "Class2D" / "a"), "--out", str(tmp_path / "t.mrcs"), "--classes", "1"]
    code = otf2d([*args, "--lowpass", "5"])
    assert code == 2
    assert "Nyquist" in capsys.readouterr().err and not (tmp_path / "t.mrcs").exists()
