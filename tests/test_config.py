"""Configuration models: cryoSPARC defaults, derived values, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from otf2d.core.config import Class2DParams, load_config
from otf2d.core.errors import ConfigError


def test_defaults_are_cryosparcs_but_for_three_final_full_passes() -> None:
    p = Class2DParams()
    assert p.n_classes == 50
    assert p.initial_uncertainty_factor == 2.0
    assert p.max_resolution_angstrom == 6.0
    assert p.alignment_resolution_angstrom == 6.0
    assert p.min_alignment_resolution_angstrom is None
    assert p.online_em_iterations == 20
    assert p.batch_size_per_class == 100
    assert p.final_full_iterations == 3  # otf2d's own (cryoSPARC: 1): see Class2DParams
    assert p.zero_pad_factor == 2
    assert (p.per_particle_scale, p.clamp_solvent, p.non_negativity) == (False, False, False)
    assert p.per_particle_scale_iterations == 0
    assert (p.recenter, p.recenter_threshold) == (True, 0.2)
    assert p.align_filaments_vertically is False
    assert p.sort_by_size is True


def test_force_max_defaults_off_for_20_classes_or_fewer() -> None:
    assert Class2DParams(n_classes=50).force_max is True
    assert Class2DParams(n_classes=20).force_max is False
    assert Class2DParams(n_classes=10, force_max_over_poses=True).force_max is True


def test_load_config_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "otf2d.toml"
    path.write_text("[classification]\nn_classes = 12\nmax_resolution_angstrom = 8\nclamp_solvent = true\n")
    cfg = load_config(path).classification
    assert cfg.n_classes == 12
    assert cfg.max_resolution_angstrom == 8.0
    assert isinstance(cfg.max_resolution_angstrom, float)
    assert cfg.clamp_solvent is True


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[classification]\nn_clases = 3\n", "n_clases"),
        ("[classification]\nn_classes = 'many'\n", "n_classes"),
        ("[classification]\nn_classes = 0\n", "n_classes must be > 0"),
        ("[classification]\nrecenter = 1\n", "recenter"),
        ("[clasification]\n", "clasification"),
        ("[classification\n", "not valid TOML"),
        (
            "[classification]\nmax_resolution_angstrom = 6\nmin_alignment_resolution_angstrom = 4\n",
            "coarser",
        ),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")
