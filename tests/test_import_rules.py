"""The import rules of DESIGN.md, with no exception: the import-linter contracts of pyproject.toml, and what
import-linter cannot see (run-time imports, calls to ``open``, imports of the old top-level names).

The contracts (``lint-imports``): the top folders in layers (demo | selection | streamer | engine over
control | monitoring | simulator over core; one layer's folders are independent, so streamer and engine never
import each other and selection reaches a live engine only through control); only the engine imports torch;
core has no sockets; the engine by role (serving | classify over storage | resources over em); em imports no
I/O module; no import cycles at any depth.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("core", "streamer", "control", "demo", "engine", "monitoring", "simulator", "selection")
TORCH_FREE = ("core", "streamer", "control", "demo", "monitoring", "simulator", "selection")
TORCH = ("torch", "torch_ctf", "torch_fourier_filter", "torch_grid_utils")
CONTRACTS = (
    "Top folders in layers",
    "Only the engine imports torch",
    "core has no sockets",
    "The engine by role",
    "The EM math does no I/O",
    "No import cycles",
)
#: calls that read or write files, which the EM math must not make
IO_CALLS = {"open", "read_text", "write_text", "read_bytes", "write_bytes", "save", "load", "savez", "tofile"}


def source_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def python_files() -> list[Path]:
    """Every Python file of the repository: the product, tests, benchmarks, deploy scripts."""
    skip = {".venv", ".git", "build", "otf2d"}
    return sorted(p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts))


def imported_modules(path: Path) -> set[str]:
    """Full names imported anywhere in ``path`` (absolute imports, function-level ones included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    kept = " ".join(out.stdout.split())
    for contract in CONTRACTS:
        assert re.search(re.escape(contract) + r".*? KEPT", kept), f"contract {contract!r} not checked:\n{out.stdout}"


def test_the_contracts_have_no_exceptions() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    contracts = config["contracts"]
    assert len(contracts) == len(CONTRACTS)
    assert not [c["name"] for c in contracts if "ignore_imports" in c]


def test_nothing_imports_the_old_top_level_names() -> None:
    """Everything is ``otf2d.<folder>``; ``import engine`` would load a second copy from the repository root."""
    offences = [
        f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        for path in python_files()
        if (bad := {m for m in imported_modules(path) if m.split(".")[0] in FOLDERS})
    ]
    assert not offences, "\n".join(offences)


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import torch.nn\n    from core import x\n")
    assert {"torch.nn", "core"} <= imported_modules(bad)


def io_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    label = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in IO_CALLS:
                found.append(f"{label}:{node.lineno} calls {name}()")
    return found


def test_em_opens_no_file() -> None:
    offences = [call for path in source_files("engine/em") for call in io_calls(path)]
    assert not offences, "\n".join(offences)


def test_the_io_checker_sees_calls(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef f(p):\n    torch.save({}, p)\n    return open(p).read()\n")
    assert sorted(c.split(" calls ")[1] for c in io_calls(bad)) == ["open()", "save()"]


def test_torch_free_packages_import_without_torch() -> None:
    """Importing every module of the torch-free folders leaves torch out of sys.modules (run-time imports)."""
    modules = [
        ".".join(("otf2d", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        for folder in TORCH_FREE
        for path in source_files(folder)
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {TORCH!r})))\n"
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


@pytest.mark.parametrize("cwd", ["root", "elsewhere"])
def test_top_level_help_lists_every_command_with_its_summary_without_importing_it(cwd: str, tmp_path: Path) -> None:
    commands = ("otf2d.engine.", "otf2d.selection.", "otf2d.control.", "otf2d.demo.", "otf2d.streamer.")
    code = (
        "import sys\n"
        "from otf2d.core.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        # finding a command's spec imports its (empty) parent packages; no module of a command may be imported
        f"cmd = [m for m, mod in sys.modules.items() if m.startswith({commands!r}) and not hasattr(mod, '__path__')]\n"
        "print(sorted(cmd + [m for m in sys.modules if m.split('.')[0] == 'torch']))\n"
    )
    where = ROOT if cwd == "root" else tmp_path
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=where, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "[]"  # no command module (nor torch) was imported to list them
    listing = {line.split()[0]: line for line in lines if line.startswith("  ") and len(line.split()) > 1}
    for name in ("classify", "engine", "select", "status", "demo", "stream", "templates"):
        assert name in listing and len(listing[name].split()) > 3, listing.get(name)
