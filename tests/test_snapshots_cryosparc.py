"""cryoSPARC .cs writer: dtype of the real J2 file, plain-NumPy loading, pyem's conventions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from snapshot_factory import COUNTS, IMAGE_PIXEL_SIZE, IMAGE_SIZE, PIXEL_SIZE, make_snapshot

from otf2d.core.errors import InputError
from otf2d.core.extra_columns import ExtraColumns
from otf2d.core.snapshot import ClassSnapshot
from otf2d.monitoring.snapshots.cryosparc import (
    ALIGNMENTS2D_OMITTED,
    ALIGNMENTS2D_STATISTICS,
    class_averages_cs_array,
    import_signature,
    particle_uids,
    particles_cs_array,
    write_class_averages_cs,
    write_cryosparc_cs,
)
from otf2d.monitoring.snapshots.relion import write_relion_class2d

J2 = "cryodrgn/cryosparc_J2_particles_exported.cs"


def _close_f4(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 rounding."""
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def _load(path: Path) -> np.ndarray:
    assert path.read_bytes()[:6] == b"\x93NUMPY"
    arr = np.load(path, allow_pickle=False)
    assert arr.dtype.names is not None
    return arr


def test_alignments2d_fields_match_the_real_cryosparc_file(shared_data: Path, tmp_path: Path) -> None:
    real = np.load(shared_data / J2, allow_pickle=False)
    ours = _load(write_cryosparc_cs(make_snapshot(), tmp_path / "p.cs"))
    assert real.dtype.names is not None and ours.dtype.names is not None
    real_align = [n for n in real.dtype.names if n.startswith("alignments2D/")]
    ours_align = [n for n in ours.dtype.names if n.startswith("alignments2D/")]
    # same fields in the same order, less the statistics otf2d does not compute (absent, not faked)
    # and those this snapshot does not know
    unknown = ALIGNMENTS2D_OMITTED | ALIGNMENTS2D_STATISTICS
    assert ours_align == [n for n in real_align if n not in unknown]
    assert len(ALIGNMENTS2D_OMITTED) == 5 and len(ALIGNMENTS2D_STATISTICS) == 5
    assert set(real_align) > unknown
    with_stats = _load(write_cryosparc_cs(_with_statistics(make_snapshot()), tmp_path / "s.cs"))
    assert [n for n in with_stats.dtype.names or () if n.startswith("alignments2D/")] == [
        n for n in real_align if n not in ALIGNMENTS2D_OMITTED
    ]
    for name in real.dtype.names:
        if name in ALIGNMENTS2D_STATISTICS:
            assert with_stats.dtype[name] == real.dtype[name], name
        if name == "blob/path" or name in unknown:
            continue  # path width depends on the paths
        assert name in ours.dtype.names, name
        assert ours.dtype[name] == real.dtype[name], (name, ours.dtype[name], real.dtype[name])
    assert ours.dtype["blob/path"].kind == "S"


def _with_statistics(snapshot: ClassSnapshot, scale: np.ndarray | None = None) -> ClassSnapshot:
    """``snapshot`` with E-step statistics consistent with its log-likelihoods (α = ``scale`` or 1)."""
    parts = snapshot.particles
    n = len(parts)
    rng = np.random.default_rng(5)
    alpha = np.ones(n) if scale is None else scale
    power = 1000.0 + rng.random(n) * 100.0
    norm = 20.0 + rng.random(n) * 10.0
    # −LL = power − α·corr + α²·norm
    corr = (power + alpha**2 * norm + parts.log_likelihood) / alpha
    stats = dataclasses.replace(parts, scale=alpha, image_power=power, cross_term=corr, norm_term=norm)
    return dataclasses.replace(snapshot, particles=stats)


def test_statistics_follow_cryosparcs_identities(tmp_path: Path) -> None:
    for scale in (None, np.linspace(0.5, 1.5, len(make_snapshot().particles))):
        snapshot = _with_statistics(make_snapshot(), scale)
        cs = _load(write_cryosparc_cs(snapshot, tmp_path / "p.cs"))
        a = {name: cs[f"alignments2D/{name}"].astype(np.float64) for name in ("error", "image_pow", "cross_cor")}
        a |= {name: cs[f"alignments2D/{name}"].astype(np.float64) for name in ("slice_pow", "alpha", "alpha_min")}
        parts = snapshot.particles
        assert parts.image_power is not None
        _close_f4(cs["alignments2D/image_pow"], parts.image_power)
        _close_f4(cs["alignments2D/alpha"], np.ones(len(parts)) if scale is None else scale)
        rebuilt = a["image_pow"] - a["alpha"] * a["cross_cor"] + a["alpha"] ** 2 * a["slice_pow"]
        np.testing.assert_allclose(a["error"], rebuilt, rtol=1e-5)
        np.testing.assert_allclose(a["alpha_min"], a["cross_cor"] / (2 * a["slice_pow"]), rtol=1e-5)


def test_a_statistic_unknown_for_one_particle_is_left_out(tmp_path: Path) -> None:
    snapshot = _with_statistics(make_snapshot())
    power = snapshot.particles.image_power
    assert power is not None
    power = power.copy()
    power[3] = np.nan
    parts = dataclasses.replace(snapshot.particles, image_power=power, scale=None)
    cs = _load(write_cryosparc_cs(dataclasses.replace(snapshot, particles=parts), tmp_path / "p.cs"))
    names = set(cs.dtype.names or ())
    assert "alignments2D/image_pow" not in names and "alignments2D/alpha" not in names
    assert {"alignments2D/cross_cor", "alignments2D/slice_pow", "alignments2D/alpha_min"} <= names


def test_values(tmp_path: Path) -> None:
    snapshot = make_snapshot()
    cs = _load(write_cryosparc_cs(snapshot, tmp_path / "p.cs"))
    parts = snapshot.particles
    n = len(parts)
    assert cs.shape == (n,)
    assert [p.decode() for p in cs["blob/path"]] == list(parts.stack_paths)
    np.testing.assert_array_equal(cs["blob/idx"], parts.indices - 1)
    np.testing.assert_array_equal(cs["blob/shape"], np.full((n, 2), IMAGE_SIZE))
    np.testing.assert_array_equal(cs["blob/psize_A"], np.float32(IMAGE_PIXEL_SIZE))
    np.testing.assert_array_equal(cs["blob/sign"], -1.0)
    np.testing.assert_array_equal(cs["ctf/exp_group_id"], parts.optics_groups - 1)
    np.testing.assert_array_equal(cs["ctf/type"], b"imported")
    ctf = parts.ctf
    _close_f4(cs["ctf/accel_kv"], ctf.voltage_kv)
    _close_f4(cs["ctf/cs_mm"], ctf.spherical_aberration_mm)
    _close_f4(cs["ctf/amp_contrast"], ctf.amplitude_contrast)
    _close_f4(cs["ctf/df1_A"], ctf.defocus_u_angstrom)
    _close_f4(cs["ctf/df2_A"], ctf.defocus_v_angstrom)
    _close_f4(cs["ctf/df_angle_rad"], ctf.defocus_angle_degrees * np.pi / 180)
    _close_f4(cs["ctf/phase_shift_rad"], ctf.phase_shift_degrees * np.pi / 180)
    _close_f4(cs["ctf/scale"], ctf.scale)
    _close_f4(cs["ctf/bfactor"], ctf.bfactor_angstrom2)
    np.testing.assert_array_equal(cs["alignments2D/class"], parts.class_index)
    np.testing.assert_array_equal(np.bincount(cs["alignments2D/class"], minlength=len(COUNTS)), COUNTS)
    _close_f4(cs["alignments2D/class_posterior"], parts.class_posterior)
    _close_f4(cs["alignments2D/class_ess"], parts.class_ess)
    np.testing.assert_array_equal(cs["alignments2D/psize_A"], np.float32(IMAGE_PIXEL_SIZE))
    assert np.all((cs["alignments2D/pose"] >= 0) & (cs["alignments2D/pose"] <= np.float32(2 * np.pi)))
    # real statistics, or none: error is the negative log-likelihood, the rest is absent
    _close_f4(cs["alignments2D/error"], -parts.log_likelihood)
    np.testing.assert_array_equal(cs["alignments2D/split"], 0)
    assert not (ALIGNMENTS2D_OMITTED | ALIGNMENTS2D_STATISTICS) & set(cs.dtype.names or ())
    assert len(np.unique(cs["blob/import_sig"])) == 1 and cs["blob/import_sig"][0] == import_signature("")


def test_pose_and_shift_conventions_on_a_known_particle(tmp_path: Path) -> None:
    snapshot = make_snapshot()
    parts = snapshot.particles
    psi = parts.psi_degrees.copy()
    ox, oy = parts.origin_x_angstrom.copy(), parts.origin_y_angstrom.copy()
    psi[:4] = [90.0, -90.0, 180.0, -1e-13]
    ox[:3] = [3.0, -1.5, 0.0]
    oy[:3] = [-4.5, 0.0, 0.75]
    parts = dataclasses.replace(parts, psi_degrees=psi, origin_x_angstrom=ox, origin_y_angstrom=oy)
    cs = particles_cs_array(dataclasses.replace(snapshot, particles=parts))
    np.testing.assert_allclose(cs["alignments2D/pose"][:3], [np.pi / 2, 3 * np.pi / 2, np.pi], rtol=1e-7)
    assert 0.0 <= cs["alignments2D/pose"][3] < 2 * np.pi  # a hair below 0° stays in [0, 2π) in float32
    # shifts in pixels of the particle images (1.5 Å/px), same sign and axis order as rlnOriginX/YAngst
    np.testing.assert_allclose(cs["alignments2D/shift"][:3], [[2.0, -3.0], [-1.0, 0.0], [0.0, 0.5]], rtol=1e-7)


def test_round_trip_against_the_relion_writer(tmp_path: Path) -> None:
    """Apply pyem's csparc2star mapping to our .cs and compare with our _data.star."""
    snapshot = make_snapshot()
    project = tmp_path / "project"
    data_star = write_relion_class2d(snapshot, project / "Class2D" / "job001", project_dir=project)["data"]
    cs = _load(write_cryosparc_cs(snapshot, project / "Class2D" / "job001" / "run_it001_particles.cs"))
    star = starfile.read(data_star, always_dict=True, parse_as_string=["rlnImageName"])["particles"]
    assert isinstance(star, pd.DataFrame)
    star = star.set_index("rlnImageName")
    # pyem: rlnImageName = "%.6d" % (idx + 1) + "@" + path
    names = ["%.6d@%s" % (i + 1, p.decode()) for i, p in zip(cs["blob/idx"], cs["blob/path"], strict=True)]  # noqa: UP031
    row = star.loc[names]
    psi_from_cs = np.rad2deg(cs["alignments2D/pose"].astype(np.float64))
    dpsi = (psi_from_cs - row["rlnAnglePsi"].to_numpy() + 180.0) % 360.0 - 180.0
    assert np.abs(dpsi).max() < 1e-4
    origins = cs["alignments2D/shift"].astype(np.float64) * cs["blob/psize_A"][:, None].astype(np.float64)
    np.testing.assert_allclose(origins[:, 0], row["rlnOriginXAngst"], atol=1e-5)
    np.testing.assert_allclose(origins[:, 1], row["rlnOriginYAngst"], atol=1e-5)
    np.testing.assert_array_equal(cs["alignments2D/class"] + 1, row["rlnClassNumber"])
    np.testing.assert_array_equal(cs["ctf/exp_group_id"] + 1, row["rlnOpticsGroup"])
    np.testing.assert_allclose(np.rad2deg(cs["ctf/df_angle_rad"]), row["rlnDefocusAngle"], atol=1e-4)
    np.testing.assert_allclose(np.rad2deg(cs["ctf/phase_shift_rad"]), row["rlnPhaseShift"], atol=1e-4)
    np.testing.assert_allclose(cs["ctf/df1_A"], row["rlnDefocusU"], rtol=1e-7)


def test_real_j2_poses_use_the_same_range_as_ours(shared_data: Path) -> None:
    real = np.load(shared_data / J2, allow_pickle=False)
    pose = real["alignments2D/pose"]
    assert pose.min() >= 0.0 and pose.max() < 2 * np.pi  # cryoSPARC stores in-plane angles in [0, 2π)
    assert np.all(np.abs(real["alignments2D/shift"]) < real["blob/shape"][:, :1] / 2)  # pixels, not Å


def test_uids_are_stable_unique_and_keyed_on_the_particle(tmp_path: Path) -> None:
    snapshot = make_snapshot()
    a = _load(write_cryosparc_cs(snapshot, tmp_path / "a.cs"))
    b = _load(write_cryosparc_cs(make_snapshot(seed=5), tmp_path / "b.cs"))  # other values, same keys
    assert a["uid"].dtype == np.dtype("<u8")
    assert len(set(a["uid"].tolist())) == len(a)
    by_key = dict(zip(zip(b["blob/path"], b["blob/idx"], strict=True), b["uid"], strict=True))
    for path, idx, uid in zip(a["blob/path"], a["blob/idx"], a["uid"], strict=True):
        assert by_key[(path, idx)] == uid
    other_session = particle_uids(snapshot.particles.stack_paths, snapshot.particles.indices, "session-2")
    assert not np.any(other_session == a["uid"])
    assert particle_uids(["x.mrcs"], [1])[0] != particle_uids(["x.mrcs"], [2])[0]


def test_class_averages_companion_points_at_the_classes_stack(tmp_path: Path) -> None:
    snapshot = make_snapshot()
    project = tmp_path / "project"
    classes = write_relion_class2d(snapshot, project / "Class2D" / "job001", project_dir=project)["classes"]
    cs = _load(
        write_class_averages_cs(snapshot, tmp_path / "c.cs", classes_stack="Class2D/job001/run_it001_classes.mrcs")
    )
    assert len(cs) == len(COUNTS)
    stack = mrcfile.read(project / cs["blob/path"][0].decode())
    assert (project / cs["blob/path"][0].decode()) == classes
    for row in cs:
        np.testing.assert_array_equal(stack[row["blob/idx"]], snapshot.averages[row["alignments2D/class"]])
    np.testing.assert_array_equal(cs["blob/shape"], np.full((len(COUNTS), 2), 32))
    np.testing.assert_array_equal(cs["blob/psize_A"], np.float32(PIXEL_SIZE))
    np.testing.assert_array_equal(cs["blob/res_A"], np.array([12.5, 15.25, 999.0, 9.75, 30.0, 18.0], dtype=np.float32))


def test_no_particles_yet(tmp_path: Path) -> None:
    cs = _load(write_cryosparc_cs(make_snapshot((0, 0)), tmp_path / "empty.cs"))
    assert cs.shape == (0,)
    assert "alignments2D/class" in cs.dtype.names  # type: ignore[operator]


def test_utf8_paths_are_kept(tmp_path: Path) -> None:
    snapshot = make_snapshot()
    paths = snapshot.particles.stack_paths.astype(object)
    paths[0] = "Extract/jöb007/Movies/mïc.mrcs"
    parts = dataclasses.replace(snapshot.particles, stack_paths=paths.astype(str))
    cs = _load(write_cryosparc_cs(dataclasses.replace(snapshot, particles=parts), tmp_path / "u.cs"))
    assert cs["blob/path"][0].decode("utf-8") == "Extract/jöb007/Movies/mïc.mrcs"
    assert cs["blob/path"][1].decode("utf-8") == snapshot.particles.stack_paths[1]


# --- class quality in the class-average .cs ------------------------------------------------------

#: Junk scores of the six classes of ``make_snapshot``: class 3 is overridden junk, class 5 good.
SCORES = np.array([0.125, 0.75, 1.0, 0.5, 0.0, 0.875])


def _scored(**parameters: object) -> ClassSnapshot:
    base = make_snapshot(junk_score=SCORES)
    return dataclasses.replace(base, parameters={**base.parameters, **parameters})


def test_class_averages_carry_junk_score_flag_and_override(tmp_path: Path) -> None:
    snapshot = _scored(class_overrides={"3": "junk", "5": "good"}, junk_score_threshold=0.5)
    cs = _load(write_class_averages_cs(snapshot, tmp_path / "c.cs", classes_stack="run_it001_classes.mrcs"))
    assert cs.dtype["otf2d/junk_score"] == np.dtype("<f4")
    assert cs.dtype["otf2d/is_junk"] == np.dtype("u1")
    np.testing.assert_array_equal(cs["otf2d/junk_score"], SCORES.astype(np.float32))
    # flagged where the score is above the threshold: 0.5 itself is not junk
    assert cs["otf2d/is_junk"].tolist() == [0, 1, 1, 0, 0, 1]
    assert [v.decode() for v in cs["otf2d/override"]] == ["", "", "junk", "", "good", ""]
    # a stricter threshold recorded with the snapshot flags fewer classes
    strict = _load(
        write_class_averages_cs(_scored(junk_score_threshold=0.8), tmp_path / "s.cs", classes_stack="x.mrcs")
    )
    assert strict["otf2d/is_junk"].tolist() == [0, 0, 1, 0, 0, 1]
    assert not any(strict["otf2d/override"])


def test_an_unscored_snapshot_has_no_quality_fields(tmp_path: Path) -> None:
    cs = _load(write_class_averages_cs(make_snapshot(), tmp_path / "c.cs", classes_stack="x.mrcs"))
    assert not [name for name in cs.dtype.names or () if name.startswith("otf2d/")]


@pytest.mark.parametrize(
    ("scores", "parameters", "message"),
    [
        (SCORES[:4], {}, "junk_score must have shape"),
        (np.where(SCORES > 0.9, np.nan, SCORES), {}, "finite values in"),
        (SCORES * 2, {}, "finite values in"),
        (SCORES, {"class_overrides": {"2": "maybe"}}, "override of class 2"),
    ],
)
def test_invalid_class_quality_writes_nothing(
    tmp_path: Path, scores: np.ndarray, parameters: dict[str, object], message: str
) -> None:
    snapshot = dataclasses.replace(make_snapshot(), junk_score=scores, parameters=parameters)
    with pytest.raises(InputError, match=message):
        write_class_averages_cs(snapshot, tmp_path / "c.cs", classes_stack="x.mrcs")
    assert not (tmp_path / "c.cs").exists()
    with pytest.raises(InputError, match=message):
        write_relion_class2d(snapshot, tmp_path / "job")
    assert not list((tmp_path / "job").glob("*"))


def test_class_posterior_is_clipped_to_one(tmp_path: Path) -> None:
    snapshot = make_snapshot()
    post = snapshot.particles.class_posterior.copy()
    post[:2] = [1.0000007, -1e-9]
    parts = dataclasses.replace(snapshot.particles, class_posterior=post)
    cs = particles_cs_array(dataclasses.replace(snapshot, particles=parts))
    assert cs["alignments2D/class_posterior"].max() <= 1.0
    assert cs["alignments2D/class_posterior"][:2].tolist() == [1.0, 0.0]


def test_class_averages_carry_the_particles_blob_sign() -> None:
    snapshot = make_snapshot()
    assert class_averages_cs_array(snapshot, "c.mrcs")["blob/sign"].tolist() == [-1.0] * snapshot.n_classes
    n = len(snapshot.particles)
    extra = ExtraColumns("cryosparc", {"blob/sign": np.ones(n, dtype="<f4")})
    positive = dataclasses.replace(snapshot, particles=dataclasses.replace(snapshot.particles, extra=extra))
    assert class_averages_cs_array(positive, "c.mrcs")["blob/sign"].tolist() == [1.0] * snapshot.n_classes
    assert particles_cs_array(positive)["blob/sign"].tolist() == [1.0] * n  # the input's own sign comes back
