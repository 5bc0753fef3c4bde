"""Checking, without reading pixels, that every stack a table refers to is there and usable."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from otf2d.core.errors import InputError
from otf2d.core.readers.loader import StackPool
from otf2d.core.readers.table import ParticleTable


@dataclass(frozen=True)
class StackCheck:
    """What :func:`check_stacks` found, per stack path as written in the table.

    Attributes
    ----------
    found
        Stacks that exist and whose header, size, indices and box agree with the table.
    missing
        Stacks that exist nowhere we look.
    problems
        Stack → what is wrong (incomplete, unreadable, index past the end, box differs).
    """

    found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def n_stacks(self) -> int:
        return len(self.found) + len(self.missing) + len(self.problems)

    @property
    def ok(self) -> bool:
        """Every stack is present and usable."""
        return not self.missing and not self.problems


def check_stacks(table: ParticleTable) -> StackCheck:
    """Open the header of every stack ``table`` refers to and compare it with the table.

    Checks, per stack: it exists (``project_dir``, then ``stack_search_dirs``); its header is a
    supported MRC header and the file is as long as the header claims; the largest index used is
    within the stack; its box equals ``table.box_size`` (when known). Never raises for a bad stack:
    the problem is recorded instead.
    """
    result = StackCheck()
    pool = StackPool(table)
    stacks, inverse = np.unique(table.stack_paths, return_inverse=True)
    max_index = np.zeros(len(stacks), dtype=np.int64)
    np.maximum.at(max_index, inverse, table.indices)
    first_use = np.full(len(stacks), len(table), dtype=np.int64)
    np.minimum.at(first_use, inverse, np.arange(len(table)))
    for k in np.argsort(first_use):
        stack = str(stacks[k])
        if table.find_stack(stack) is None:
            result.missing.append(stack)
            continue
        try:
            header = pool.header(stack)
        except InputError as exc:
            result.problems[stack] = exc.what
            continue
        if max_index[k] > header.n_images:
            result.problems[stack] = f"index {max_index[k]} is past the end: the stack holds {header.n_images}"
        elif table.box_size and (header.height, header.width) != (table.box_size, table.box_size):
            result.problems[stack] = f"images are {header.width}x{header.height}, metadata says box {table.box_size}"
        else:
            result.found.append(stack)
    return result


__all__ = ["StackCheck", "check_stacks"]
