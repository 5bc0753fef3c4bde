"""``otf2d inspect`` through the real dispatcher: text, JSON and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import starfile
from particle_files import random_images, star_loop, write_stack, write_star

from otf2d.core.cli import main


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["inspect", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_relion31_json_matches_the_file(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = shared_data / "aspire" / "sample_particles_relion31.star"
    code, out, _ = _run(capsys, str(path), "--json")
    assert code == 0
    report = json.loads(out)
    star = starfile.read(path, always_dict=True)
    particles, optics = star["particles"], star["optics"]
    assert report["particles"] == len(particles) == 17
    assert report["pixel_size_angstrom"] == optics["rlnImagePixelSize"].iloc[0]
    assert report["box_size"] == 200  # from sample.mrcs's header
    groups = {g["number"]: g for g in report["optics_groups"]}
    counts = particles["rlnOpticsGroup"].value_counts().to_dict()
    assert {n: g["particles"] for n, g in groups.items()} == counts
    assert {n: g["voltage_kv"] for n, g in groups.items()} == dict(
        zip(optics["rlnOpticsGroup"], optics["rlnVoltage"], strict=True)
    )
    ctf = report["ctf"]
    assert ctf["defocus_u_angstrom"]["min"] == particles["rlnDefocusU"].min()
    assert ctf["defocus_v_angstrom"]["max"] == particles["rlnDefocusV"].max()
    assert ctf["voltage_kv"] == sorted(optics["rlnVoltage"].tolist())
    assert report["stacks"] == {
        "referenced": 1,
        "found": 1,
        "missing": 0,
        "unusable": 0,
        "first_missing": [],
        "first_unusable": {},
    }
    assert report["micrographs"] == 1 and report["alignments_2d"] is True


def test_text_output(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, str(shared_data / "cryodrgn" / "empiar_10076_7.cs"))
    assert code == 0
    assert "particles:     7" in out and "box:           320 px" in out and "1.3100 Å" in out
    assert "1 found, 0 missing" in out and "2D alignments: absent" in out


def test_missing_stacks_exit_1(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = shared_data / "cryodrgn" / "cryosparc_P12_J24_001_particles.cs"
    code, out, _ = _run(capsys, str(path), "--json")
    assert code == 1
    report = json.loads(out)
    stacks = {p.decode().lstrip(">") for p in np.load(path, allow_pickle=False)["blob/path"]}
    assert report["stacks"]["referenced"] == report["stacks"]["missing"] == len(stacks)
    assert set(report["stacks"]["first_missing"]) <= stacks and len(report["stacks"]["first_missing"]) == 5


def test_some_missing_some_broken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_stack(tmp_path / "ok.mrcs", random_images(2, 16))
    write_stack(tmp_path / "short.mrcs", random_images(2, 16))
    names = ["1@ok.mrcs", "2@ok.mrcs", "1@gone.mrcs", "3@short.mrcs"]
    star = write_star(tmp_path / "p.star", star_loop("", {"rlnImageName": names, "rlnImagePixelSize": [1.0] * 4}))
    code, out, _ = _run(capsys, str(star))
    assert code == 1
    assert "3 referenced, 1 found, 1 missing, 1 unusable" in out
    assert "missing:  gone.mrcs" in out and "short.mrcs: index 3 is past the end" in out


def test_bare_stack(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, str(shared_data / "aspire" / "sample.mrcs"), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["images"] == 17 and report["box_size"] == [200, 200] and report["dtype"] == "float32"
    assert report["pixel_size_angstrom_in_header"] == 0.0


def test_float16_bare_stack_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = write_stack(tmp_path / "h.mrcs", random_images(3, 8).astype(np.float16), voxel_size=2.5)
    code, out, _ = _run(capsys, str(stack))
    assert code == 0 and "float16 (mode 12)" in out and "2.5000 Å (header)" in out and "images:        3" in out


def test_bad_files_exit_2(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drgnai = shared_data / "drgnai" / "header_claims_11029_sections.mrcs"
    code, _, err = _run(capsys, str(drgnai))
    assert code == 2 and str(drgnai) in err and "11029" in err
    empty = tmp_path / "p.star"
    empty.touch()
    code, _, err = _run(capsys, str(empty))
    assert code == 2 and str(empty) in err and "empty" in err


def test_pixel_size_option(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = shared_data / "aspire" / "rln_proj_65.star"
    code, _, err = _run(capsys, str(path))
    assert code == 2 and "--pixel-size" in err
    code, out, _ = _run(capsys, str(path), "--pixel-size", "3.0", "--json")
    report = json.loads(out)
    assert code == 0 and report["pixel_size_angstrom"] == 3.0 and report["ctf"]["present"] is False
