"""One installed import name, ``otf2d``: the package list of pyproject.toml, the namespace links, the wheel."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("core", "streamer", "control", "demo", "engine", "monitoring", "simulator", "selection")


def setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_folder_is_a_subpackage_of_otf2d() -> None:
    assert setuptools_config()["package-dir"] == {f"otf2d.{folder}": folder for folder in FOLDERS}


def test_the_package_list_is_the_tree() -> None:
    """A new subpackage (a folder with ``__init__.py``) must be listed, or the wheel would leave it out."""
    tree = {
        ".".join(("otf2d", *init.parent.relative_to(ROOT).parts))
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert sorted(setuptools_config()["packages"]) == sorted(tree)


def test_the_namespace_folder_links_every_folder() -> None:
    """``otf2d/<folder>`` → ``../<folder>``: what mypy checks and what ``python -m otf2d...`` finds from the root."""
    for folder in FOLDERS:
        link = ROOT / "otf2d" / folder
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve(), link
    assert sorted(p.name for p in (ROOT / "otf2d").iterdir()) == sorted(FOLDERS)


@pytest.mark.slow
def test_the_wheel_installs_only_otf2d(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", tmp_path, ROOT],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("otf2d-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"otf2d", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "otf2d/engine/em/classifier.py" in names and "otf2d/control/client.py" in names
    assert not [n for n in names if n.count("/") == 1 and n.startswith("otf2d/")]  # a namespace: no otf2d/*.py
