"""One table of classification flags (otf2d.core.classification_flags), shared by ``classify`` and ``engine``:
every cryoSPARC parameter is a flag of both commands and a key of the config's [classification] table."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from otf2d.core.classification_flags import FORCE_MAX_FIELD, PARAM_FLAGS, PRECISION_FIELD, params_from_args
from otf2d.core.config import Class2DParams
from otf2d.core.errors import ConfigError
from otf2d.engine.classify import classify_cmd
from otf2d.engine.serving import cli as engine_cli

#: A value other than cryoSPARC's default for every parameter, as flags.
EVERY_FLAG = [
    "--classes", "12", "--icuf", "3", "--max-res", "8", "--max-align-res", "10", "--min-align-res", "30",
    "--mask-diameter", "150", "--mask-outer-diameter", "180", "--online-em-iterations", "5",
    "--batch-per-class", "40", "--final-full-iterations", "2", "--zero-pad", "3", "--per-particle-scale",
    "--per-particle-scale-iterations", "4",
    "--clamp-solvent", "--non-negativity", "--no-recenter", "--recenter-threshold", "0.3",
    "--align-filaments-vertically", "--no-sort", "--in-plane-step", "4", "--max-shift", "12",
    "--noise-anneal-start", "1", "--noise-anneal-iterations", "9", "--seed", "7", "--force-max",
    "--precision", "bf16",
]  # fmt: skip


def engine_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    engine_cli.add_args(parser)
    return parser.parse_args(["--data", "d", *argv])


def classify_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    classify_cmd.add_args(parser)
    return parser.parse_args(["in.star", "--out", "o", *argv])


def test_the_table_covers_every_parameter() -> None:
    covered = {f.field for f in PARAM_FLAGS} | {FORCE_MAX_FIELD, PRECISION_FIELD}
    assert covered == {f.name for f in dataclasses.fields(Class2DParams)}


def test_engine_and_classify_accept_every_parameter_as_the_same_flag() -> None:
    from_engine = engine_cli.session_defaults(engine_args(EVERY_FLAG))
    from_classify = params_from_args(classify_args(EVERY_FLAG))
    assert from_engine == from_classify
    defaults = dataclasses.asdict(Class2DParams())
    changed = {name for name, value in dataclasses.asdict(from_engine).items() if value != defaults[name]}
    assert changed == set(defaults)  # every parameter was set by its flag


def toml_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else repr(value).replace("'", '"')


def test_every_parameter_is_a_config_key_of_the_engine(tmp_path: Path) -> None:
    wanted = engine_cli.session_defaults(engine_args(EVERY_FLAG))
    config = tmp_path / "engine.toml"
    rows = [f"{k} = {toml_value(v)}" for k, v in dataclasses.asdict(wanted).items()]
    config.write_text("[classification]\n" + "\n".join(rows) + "\n")
    assert engine_cli.session_defaults(engine_args(["--config", str(config)])) == wanted
    # flags win over the file, for the engine as for classify
    both = ["--config", str(config), "--classes", "30", "--marginalise"]
    assert engine_cli.session_defaults(engine_args(both)) == dataclasses.replace(
        wanted, n_classes=30, force_max_over_poses=False
    )
    assert params_from_args(classify_args(both)) == engine_cli.session_defaults(engine_args(both))


def test_no_flag_means_cryosparcs_defaults() -> None:
    assert engine_cli.session_defaults(engine_args([])) == Class2DParams() == params_from_args(classify_args([]))


def test_an_invalid_value_is_a_config_error_for_the_engine_too() -> None:
    with pytest.raises(ConfigError, match="recenter_threshold"):
        engine_cli.session_defaults(engine_args(["--recenter-threshold", "2"]))
