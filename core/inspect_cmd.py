"""Describe a particle file: count, box, pixel size, optics groups, CTF ranges and whether its stacks exist.

Reads RELION particle STAR files (3.0 to 5, and per-micrograph _extract.star), cryoSPARC .cs files and
bare MRC files, which it tells apart: a particle (image) stack, a single micrograph or image, a 3D map;
gzip- or bzip2-compressed MRC files (``.map.gz``, ``.mrc.bz2``) are read as mrcfile reads them. For a
RELION file it says which CTF values were not in the file and took RELION's defaults (a RELION 3.0
file has no optics table). No images are read: stacks are checked through their headers.

Exit status: 0 when every stack is present and usable, 1 when some are missing or unusable,
2 when the file itself cannot be read.

Example usage:
  otf2d inspect Extract/job007/particles.star
  otf2d inspect J24/J24_001_particles.cs --json
  otf2d inspect Extract/job007/Movies/mic_0001_extract.star --optics-from Extract/job007/particles.star
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

from otf2d.core.errors import InputError
from otf2d.core.input_args import add_input_args, read_table_from_args
from otf2d.core.particles import RELION_CTF_DEFAULTS
from otf2d.core.readers import (
    StackCheck,
    StackHeader,
    check_stacks,
    read_stack_header,
    sniff_format,
)
from otf2d.core.readers.optics import CTF_LABELS
from otf2d.core.readers.stacks import SUPPORTED_MODES
from otf2d.core.readers.table import ParticleTable

#: How many missing or broken stacks to name.
SHOW_STACKS = 5
#: A single image at least this wide (pixels) is called a micrograph.
MICROGRAPH_MIN_PIXELS = 1024
#: First bytes of the compressed files mrcfile reads.
COMPRESSION_MAGIC: dict[str, bytes] = {"gzip": b"\x1f\x8b", "bzip2": b"BZh"}


def add_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``otf2d inspect``."""
    parser.add_argument("file", help="particles.star, _extract.star, .cs, or a bare .mrcs/.mrc stack")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_input_args(parser)


def compression_of(path: str | Path) -> str | None:
    """``"gzip"`` or ``"bzip2"`` when the file starts with that magic, else ``None``."""
    with Path(path).open("rb") as fh:
        head = fh.read(4)
    return next((name for name, magic in COMPRESSION_MAGIC.items() if head.startswith(magic)), None)


def mrc_kind(nx: int, ny: int, nz: int, ispg: int) -> str:
    """What an MRC file holds: ``"3d-map"``, ``"image-stack"``, ``"micrograph"`` or ``"image"``.

    One section is a single image (a micrograph when at least :data:`MICROGRAPH_MIN_PIXELS` wide).
    Several sections are an image stack when the space group says so (``ispg`` 0, as RELION and
    mrcfile's ``set_image_stack`` write) or when the sections are not a cube (cryoSPARC writes particle
    stacks with ``ispg`` 1); a cube with a volume space group is a 3D map.
    """
    if nz <= 1:
        return "micrograph" if max(nx, ny) >= MICROGRAPH_MIN_PIXELS else "image"
    if ispg == 0 or not nx == ny == nz:
        return "image-stack"
    return "3d-map"


_KIND_TEXT = {
    "3d-map": "MRC 3D map (a volume, not particles)",
    "image-stack": "MRC image stack (no particle metadata)",
    "micrograph": "MRC single micrograph (one image, not extracted particles)",
    "image": "MRC single 2D image",
}


def ctf_defaults(table: ParticleTable, given: set[str]) -> dict[str, str]:
    """For a RELION file: each CTF value found neither in the particle rows nor in the optics table
    (nor given on the command line) → the default RELION uses for it, in words."""
    if table.extra is None or table.extra.origin != "relion":
        return {}
    names = set(table.extra.names)
    out: dict[str, str] = {}
    for field, label in CTF_LABELS.items():
        if field == "defocus_u_angstrom":
            continue  # no default: a file without it has no CTF at all
        if field in given or label in names or f"optics/{label}" in names:
            continue
        out[label] = "= rlnDefocusU" if field == "defocus_v_angstrom" else f"{RELION_CTF_DEFAULTS[field]:g}"
    return out


def _range(values: np.ndarray) -> dict[str, float]:
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def summarize_table(table: ParticleTable, check: StackCheck, given: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The facts ``otf2d inspect`` reports about a particle table, as JSON-ready values.

    ``given`` names the CTF fields set on the command line (not reported as defaulted)."""
    groups, counts = np.unique(table.optics_groups, return_counts=True)
    count_of = dict(zip(groups.tolist(), counts.tolist(), strict=True))
    ctf = table.ctf
    distinct = {
        name: sorted({round(float(v), 6) for v in getattr(ctf, name)})
        for name in ("voltage_kv", "spherical_aberration_mm", "amplitude_contrast")
    }
    return {
        "file": str(table.source),
        "format": table.format,
        "particles": len(table),
        "duplicate_rows_dropped": table.duplicates_dropped,
        "box_size": table.box_size,
        "pixel_size_angstrom": table.pixel_size_angstrom,
        "session": table.session,
        "project_dir": str(table.project_dir),
        "optics_groups": [
            {**{f.name: getattr(g, f.name) for f in fields(g)}, "particles": count_of.get(g.number, 0)}
            for g in table.optics
        ],
        "ctf": {
            "present": table.has_ctf,
            "defocus_u_angstrom": _range(ctf.defocus_u_angstrom),
            "defocus_v_angstrom": _range(ctf.defocus_v_angstrom),
            "defocus_angle_degrees": _range(ctf.defocus_angle_degrees),
            "phase_shift_degrees": _range(ctf.phase_shift_degrees),
            "bfactor_angstrom2": _range(ctf.bfactor_angstrom2),
            **distinct,
            "defaulted": ctf_defaults(table, set(given)),
        },
        "stacks": {
            "referenced": check.n_stacks,
            "found": len(check.found),
            "missing": len(check.missing),
            "unusable": len(check.problems),
            "first_missing": check.missing[:SHOW_STACKS],
            "first_unusable": dict(list(check.problems.items())[:SHOW_STACKS]),
        },
        "micrographs": None if table.micrograph_names is None else len(np.unique(table.micrograph_names)),
        "alignments_2d": table.alignments is not None,
        "classes_2d": table.alignments is not None and table.alignments.class_index is not None,
    }


def _ispg(path: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            return int(mrc.header.ispg)


def summarize_stack(header: StackHeader) -> dict[str, Any]:
    """The facts ``otf2d inspect`` reports about a bare MRC file (``kind``: see :func:`mrc_kind`)."""
    return {
        "file": str(header.path),
        "format": "mrc",
        "kind": mrc_kind(header.width, header.height, header.n_images, _ispg(header.path)),
        "compression": None,
        "images": header.n_images,
        "box_size": [header.width, header.height],
        "mode": header.mode,
        "dtype": SUPPORTED_MODES[header.mode],
        "pixel_size_angstrom_in_header": header.voxel_size_angstrom,
        "file_size_bytes": header.file_size,
        "expected_size_bytes": header.expected_size,
    }


def summarize_compressed(path: Path, compression: str) -> dict[str, Any]:
    """The facts about a gzip/bzip2-compressed MRC file, read through mrcfile.

    Raises
    ------
    InputError
        A compressed file that is not MRC (otf2d reads STAR and ``.cs`` files uncompressed only).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, header_only=True, permissive=True) as mrc:
                h = mrc.header
                nx, ny, nz, mode, ispg = int(h.nx), int(h.ny), int(h.nz), int(h.mode), int(h.ispg)
                voxel = float(mrc.voxel_size.x)
                is_mrc = bytes(h.map) == b"MAP "
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(path, f"{compression}-compressed file that cannot be read ({exc})") from None
    if not is_mrc or nx < 1 or ny < 1 or nz < 1:
        raise InputError(
            path,
            f"{compression}-compressed file that is not an MRC file: otf2d reads STAR and .cs files "
            "uncompressed; decompress it first (gunzip / bunzip2)",
        )
    return {
        "file": str(path),
        "format": "mrc",
        "kind": mrc_kind(nx, ny, nz, ispg),
        "compression": compression,
        "images": nz,
        "box_size": [nx, ny],
        "mode": mode,
        "dtype": SUPPORTED_MODES.get(mode, f"mode {mode} (unsupported)"),
        "pixel_size_angstrom_in_header": voxel,
        "file_size_bytes": path.stat().st_size,
        "expected_size_bytes": None,
    }


def _fmt_range(r: dict[str, float], digits: int = 1) -> str:
    return f"{r['min']:.{digits}f} / {r['median']:.{digits}f} / {r['max']:.{digits}f}"


def format_table_summary(s: dict[str, Any]) -> str:
    """Human-readable text of :func:`summarize_table`'s result."""
    lines = [
        f"file:          {s['file']}",
        f"format:        {s['format']}",
        f"particles:     {s['particles']}"
        + (f" ({s['duplicate_rows_dropped']} repeated row(s) dropped)" if s["duplicate_rows_dropped"] else ""),
        f"box:           {s['box_size'] or 'unknown'} px",
        f"pixel size:    {s['pixel_size_angstrom']:.4f} Å",
        f"session:       {s['session']}",
        f"project dir:   {s['project_dir']}",
        f"optics groups: {len(s['optics_groups'])}",
        f"  {'group':>5}  {'name':<20} {'kV':>7} {'Cs mm':>6} {'Q0':>6} {'Å/px':>8} {'box':>5} {'particles':>9}",
    ]
    for g in s["optics_groups"]:
        lines.append(
            f"  {g['number']:>5}  {g['name'][:20]:<20} {g['voltage_kv']:>7.1f} "
            f"{g['spherical_aberration_mm']:>6.2f} "
            f"{g['amplitude_contrast']:>6.3f} {g['image_pixel_size_angstrom']:>8.4f} {g['image_size']:>5} "
            f"{g['particles']:>9}"
        )
    c = s["ctf"]
    lines.append("CTF (min / median / max):" if c["present"] else "CTF: none in the file (defocus 0)")
    if c["present"]:
        lines += [
            f"  defocus U:   {_fmt_range(c['defocus_u_angstrom'])} Å",
            f"  defocus V:   {_fmt_range(c['defocus_v_angstrom'])} Å",
            f"  angle:       {_fmt_range(c['defocus_angle_degrees'], 2)} °",
            f"  phase shift: {_fmt_range(c['phase_shift_degrees'], 2)} °",
            f"  B-factor:    {_fmt_range(c['bfactor_angstrom2'], 2)} Å²",
        ]
    lines += [
        f"  kV: {c['voltage_kv']}   Cs: {c['spherical_aberration_mm']} mm   Q0: {c['amplitude_contrast']}",
    ]
    if c["defaulted"]:
        why = " (a RELION 3.0 file: no optics table)" if s["format"] == "relion30" else ""
        defaults = ", ".join(f"{label} {value}" for label, value in c["defaulted"].items())
        lines.append(f"  not in the file, RELION's defaults used{why}: {defaults}")
    st = s["stacks"]
    lines.append(
        f"stacks:        {st['referenced']} referenced, {st['found']} found, {st['missing']} missing, "
        f"{st['unusable']} unusable"
    )
    lines += [f"  missing:  {m}" for m in st["first_missing"]]
    lines += [f"  unusable: {k}: {v}" for k, v in st["first_unusable"].items()]
    shown = len(st["first_missing"]) + len(st["first_unusable"])
    if st["missing"] + st["unusable"] > shown:
        lines.append(f"  ... and {st['missing'] + st['unusable'] - shown} more")
    mics = s["micrographs"]
    lines.append(f"micrographs:   {mics if mics is not None else 'not recorded'}")
    align = "present" + (" (with classes)" if s["classes_2d"] else "") if s["alignments_2d"] else "absent"
    lines.append(f"2D alignments: {align}")
    return "\n".join(lines)


def format_stack_summary(s: dict[str, Any]) -> str:
    """Human-readable text of :func:`summarize_stack`'s (or :func:`summarize_compressed`'s) result."""
    px = s["pixel_size_angstrom_in_header"]
    nx, ny = s["box_size"]
    kind = s["kind"]
    fmt = _KIND_TEXT[kind] + (f", {s['compression']}-compressed" if s["compression"] else "")
    if kind == "3d-map":
        count, size = "volume:", f"{nx} x {ny} x {s['images']} voxels"
    elif kind == "image-stack":
        count, size = "images:", f"{s['images']}"
    else:
        count, size = "image:", f"1 ({nx} x {ny} px)"
    lines = [
        f"file:          {s['file']}",
        f"format:        {fmt}",
        f"{count:<14} {size}",
        f"box:           {nx} x {ny} px",
        f"dtype:         {s['dtype']} (mode {s['mode']})",
        f"pixel size:    {f'{px:.4f} Å (header)' if px > 0 else '0 in the header (not set)'}",
    ]
    if s["expected_size_bytes"] is not None:
        lines.append(f"size:          {s['file_size_bytes']} bytes (header promises {s['expected_size_bytes']})")
    if kind == "3d-map":
        lines.append("note:          a 3D map is not a particle stack: otf2d classifies 2D particle images")
    elif kind == "micrograph":
        lines.append("note:          a micrograph, not extracted particles: extract particles first")
    if s["compression"]:
        lines.append("note:          classify and stream read uncompressed stacks: decompress it first")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run ``otf2d inspect``; returns 0 (all stacks usable), 1 (some missing/unusable)."""
    compression = compression_of(args.file) if Path(args.file).is_file() else None
    if compression is not None:
        summary = summarize_compressed(Path(args.file), compression)
        print(json.dumps(summary, indent=2) if args.json else format_stack_summary(summary))
        return 0
    if sniff_format(args.file) == "mrc":
        summary = summarize_stack(read_stack_header(args.file))
        print(json.dumps(summary, indent=2) if args.json else format_stack_summary(summary))
        return 0
    table = read_table_from_args(args.file, args)
    check = check_stacks(table)
    options = {
        "voltage_kv": args.voltage,
        "spherical_aberration_mm": args.cs,
        "amplitude_contrast": args.amplitude_contrast,
    }
    summary = summarize_table(table, check, frozenset(k for k, v in options.items() if v is not None))
    print(json.dumps(summary, indent=2) if args.json else format_table_summary(summary))
    return 0 if check.ok else 1
