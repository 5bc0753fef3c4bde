"""cryoSPARC result groups (``.csg``): what cryoSPARC's **Import Result Group** job reads.

A ``.csg`` is the small YAML file cryoSPARC writes beside every exported result (and
cryosparc-tools' documentation names as what Import Result Group takes): the group's type and name,
and for each *slot* (a field prefix of the ``.cs``: ``blob``, ``ctf``, ``alignments2D``, ...) the
``.cs`` holding it, its number of rows and its type ``<group type>.<slot>``::

    created: '2026-12-07 09:30:00.000000'
    group:
      description: otf2d particles; blob/path relative to /data/project
      name: particles
      title: otf2d particles
      type: particle
    results:
      blob:
        metafile: '>run_it007_particles.cs'
        num_items: 1000
        type: particle.blob
      ...
    version: otf2d 0.1.0

Paths: a ``metafile`` starting with ``>`` is relative to the folder of the ``.csg`` (cryoSPARC's own
convention in exported results); otf2d writes the ``.csg`` beside its ``.cs``, so the metafile is
``>`` and the ``.cs`` file's name. The ``blob/path`` values inside the ``.cs`` are relative to one
root: the project directory (see :func:`otf2d.monitoring.snapshots.cryosparc_path_root`), which the
group's ``description`` states (and ``latest.json`` names as ``cryosparc_paths_relative_to``).

Only the slots cryoSPARC's data types know are named (:data:`KNOWN_SLOTS`, present in the ``.cs``);
otf2d's own fields (``otf2d/*``) stay in the ``.cs`` (cryosparc-tools' ``Dataset.load`` reads them)
but are not offered to cryoSPARC as a slot it could not type. ``version`` names the writer (otf2d and
its version), not a cryoSPARC version.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from otf2d import core
from otf2d.core.durable import write_text_atomic

#: The slots (field prefixes) named in a result group, for each group type, when the ``.cs`` has them.
KNOWN_SLOTS: dict[str, tuple[str, ...]] = {
    "particle": ("blob", "ctf", "alignments2D", "alignments3D", "location", "pick_stats", "motion"),
    "template": ("blob", "alignments2D"),
}


def slots_of(cs: np.ndarray, group_type: str) -> list[str]:
    """The :data:`KNOWN_SLOTS` of ``group_type`` that have at least one field in ``cs``, in that order."""
    prefixes = {name.split("/", 1)[0] for name in cs.dtype.names or () if "/" in name}
    return [slot for slot in KNOWN_SLOTS[group_type] if slot in prefixes]


def _quoted(text: str) -> str:
    """``text`` as a YAML single-quoted scalar (a quote doubled; line breaks become spaces)."""
    flat = " ".join(str(text).splitlines())
    return "'" + flat.replace("'", "''") + "'"


def result_group_text(cs: np.ndarray, cs_name: str, *, group_type: str, name: str, title: str, description: str) -> str:
    """The ``.csg`` text for the result ``cs`` stored as ``cs_name`` beside it (see the module docstring).

    Raises
    ------
    ValueError
        An unknown ``group_type`` or a ``cs_name`` with a folder in it (a programming error).
    """
    if group_type not in KNOWN_SLOTS:
        raise ValueError(f"unknown result group type {group_type!r}")
    if Path(cs_name).name != cs_name:
        raise ValueError(f"the .cs of a result group is named without a folder, got {cs_name!r}")
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    lines = [
        f"created: {_quoted(created)}",
        "group:",
        f"  description: {_quoted(description)}",
        f"  name: {_quoted(name)}",
        f"  title: {_quoted(title)}",
        f"  type: {group_type}",
        "results:",
    ]
    for slot in slots_of(cs, group_type):
        lines += [
            f"  {slot}:",
            f"    metafile: {_quoted('>' + cs_name)}",
            f"    num_items: {len(cs)}",
            f"    type: {group_type}.{slot}",
        ]
    lines.append(f"version: {_quoted('otf2d ' + core.__version__)}")
    return "\n".join(lines) + "\n"


def write_result_group(
    path: str | os.PathLike[str],
    cs: np.ndarray,
    cs_path: str | os.PathLike[str],
    *,
    group_type: str,
    name: str,
    title: str,
    root: str | os.PathLike[str] | None,
) -> Path:
    """Write the ``.csg`` of ``cs`` (stored at ``cs_path``, in the same folder as ``path``), atomically.

    ``root`` is the directory the ``blob/path`` values of ``cs`` are relative to (``None``: they are
    absolute); the description says so.

    Raises
    ------
    ValueError
        ``cs_path`` not in the folder of ``path``, or an unknown ``group_type``.
    """
    target, stored = Path(path), Path(cs_path)
    if os.path.abspath(stored.parent) != os.path.abspath(target.parent):
        raise ValueError(f"{stored} is not beside {target}: a result group names its .cs as '>' + its name")
    where = "absolute" if root is None else f"relative to {os.path.abspath(root)}"
    description = f"{title} written by otf2d; blob/path {where}"
    text = result_group_text(cs, stored.name, group_type=group_type, name=name, title=title, description=description)
    return write_text_atomic(target, text)


__all__ = ["KNOWN_SLOTS", "result_group_text", "slots_of", "write_result_group"]
