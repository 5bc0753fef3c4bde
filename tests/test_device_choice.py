"""One device/threads choice (otf2d.engine.resources.device) for ``otf2d engine`` and ``otf2d classify``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest
import torch

from otf2d.core.errors import ConfigError
from otf2d.engine.classify import classify_cmd
from otf2d.engine.resources.device import choose_device
from otf2d.engine.serving import cli as engine_cli


@pytest.fixture
def torch_threads() -> Iterator[int]:
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def options(add_args: object) -> dict[str, tuple[object, ...]]:
    parser = argparse.ArgumentParser()
    add_args(parser)  # type: ignore[operator]
    actions = {a.dest: a for a in parser._actions}
    return {name: (actions[name].choices, actions[name].default, actions[name].help) for name in ("device", "threads")}


def test_both_commands_offer_the_same_device_and_threads_options() -> None:
    assert options(engine_cli.add_args) == options(classify_cmd.add_args)


def test_cpu_with_threads(torch_threads: int) -> None:
    assert choose_device("cpu", 1) == torch.device("cpu")
    assert torch.get_num_threads() == 1


def test_auto_is_cuda_when_present_else_cpu(torch_threads: int) -> None:
    assert choose_device("auto", None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch.get_num_threads() == torch_threads  # None leaves torch's choice


@pytest.mark.parametrize(("device", "threads", "message"), [("cpu", 0, "--threads"), ("tpu", None, "--device")])
def test_bad_choices_are_config_errors(device: str, threads: int | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        choose_device(device, threads)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_refused() -> None:
    with pytest.raises(ConfigError, match="no CUDA device"):
        choose_device("cuda", None)
