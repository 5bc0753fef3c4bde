"""The import direction of DESIGN.md, checked on the source and at run time.

streamer and engine never import each other; core, streamer, monitoring, simulator and selection never
import torch; core is a leaf (imports no other otf2d package); selection uses the engine only through its
torch-free control client (``otf2d.control.client``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "streamer", "engine", "monitoring", "simulator", "selection")
TORCH = ("torch", "torch_ctf", "torch_fourier_filter", "torch_grid_utils")

#: package -> top-level modules it must never import (at any depth, even inside functions)
FORBIDDEN = {
    "core": {"streamer", "engine", "monitoring", "simulator", "zmq", *TORCH},
    "streamer": {"engine", "monitoring", "simulator", *TORCH},
    "engine": {"streamer"},
    "monitoring": {"streamer", "engine", "simulator", *TORCH},
    "simulator": {"streamer", "engine", *TORCH},
    "selection": {"streamer", "simulator", *TORCH},
}
#: package -> the only modules of ``engine`` it may import (torch-free ones)
ENGINE_ALLOWED = {"selection": {"otf2d.control.client"}}


def imported_top_levels(path: Path) -> set[str]:
    """Top-level module names imported anywhere in ``path`` (absolute imports only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def source_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_no_forbidden_imports_in_source(package: str) -> None:
    files = source_files(package)
    assert files, f"package {package} has no modules"
    offences = [
        f"{path.relative_to(ROOT)} imports {sorted(imported_top_levels(path) & FORBIDDEN[package])}"
        for path in files
        if imported_top_levels(path) & FORBIDDEN[package]
    ]
    assert not offences, "\n".join(offences)


def imported_modules(path: Path) -> set[str]:
    """Full module names imported anywhere in ``path`` (absolute imports only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(ENGINE_ALLOWED))
def test_only_allowed_engine_modules(package: str) -> None:
    offences = [
        f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        for path in source_files(package)
        if (
            bad := {
                m for m in imported_modules(path) if m.split(".")[0] == "engine" and m not in ENGINE_ALLOWED[package]
            }
        )
    ]
    assert not offences, "\n".join(offences)


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import torch.nn\n    from otf2d.engine.em import x\n")
    assert {"torch", "engine"} <= imported_top_levels(bad)


def test_torch_free_packages_import_without_torch() -> None:
    """Importing every module of the torch-free packages leaves torch out of sys.modules."""
    modules = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in ("core", "streamer", "monitoring", "simulator", "selection")
        for path in source_files(package)
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{TORCH!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"torch was imported: {out.stdout.strip()}"


def test_cli_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from otf2d.core.cli import main\n"
        "try:\n"
        "    main(['simulate', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_top_level_help_lists_every_command_with_its_summary_without_importing_it() -> None:
    code = (
        "import sys\n"
        "from otf2d.core.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'engine', 'selection') and '.' in m))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "[]"  # no command module (nor torch) was imported to list them
    listing = {line.split()[0]: line for line in lines if line.startswith("  ") and len(line.split()) > 1}
    for name in ("classify", "engine", "select", "stream", "templates"):
        assert name in listing and len(listing[name].split()) > 3, listing.get(name)
