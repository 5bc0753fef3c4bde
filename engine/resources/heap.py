"""Handing heap memory that the engine has freed back to the operating system (glibc ``malloc_trim``),
and keeping big tensors out of the heap (glibc ``mallopt(M_MMAP_THRESHOLD)``).

CPython, NumPy and torch take their large temporaries from the C allocator. glibc keeps what is
freed inside its arenas (one per thread that allocates) for reuse, so after a burst — a snapshot of
10⁵ particles, a checkpoint, the steps of a busy period — the engine's resident size stays near the
burst's high-water mark although nothing is held any more. ``malloc_trim(0)`` returns the free
pages of every arena to the kernel (``madvise(MADV_DONTNEED)``; the next allocation that needs them
gets fresh zero pages). C libraries without it (musl, macOS, Windows) make every trim here a no-op,
logged once at debug level.

:class:`HeapTrimmer` rate-limits the trims of one thread: the worker trims after a checkpoint and
when it has nothing to fold, at most once per interval and only if it did anything since the last.

Trimming returns whole free pages only. On a CPU engine the E- and M-steps allocate and free tensors
of megabytes thousands of times a minute, between the small, long-lived allocations of Python,
SQLite and ZeroMQ; glibc's *dynamic* mmap threshold (it rises to the size of each large block
freed, up to 32 MB) soon serves all of them from the heap, which fragments. :func:`set_mmap_threshold`
fixes the threshold (``mallopt(M_MMAP_THRESHOLD)``), so blocks of at least that size are mapped on
their own and returned to the OS when freed. Measured with ``benchmarks/stream.py --rates ""
--memory-marks 20000,100000,200000 [--mmap-threshold-mb 0]`` (2 cores, K = 50, RSS as the median
over 10 s, 2026-12-04):

======================  ============================  =================  =================
threshold               RSS at 20k / 100k / 200k MB   growth 20k → 200k  feed 100k → 200k
======================  ============================  =================  =================
glibc's dynamic one     569 / 695 / 732               +28.6 %            72 s
4 MiB (the engine's)    550 / 569 / 580               +5.4 %             86 s
4 MiB, a second run     520 / 548 / 559               +7.5 %             94 s
======================  ============================  =================  =================

4 MiB holds a fifth less at 200k particles and levels off, for page faults that cost a saturated
engine about a sixth of its particles per second (not one that keeps up: 750/s still did).
``--mmap-threshold-mb 0`` restores glibc's behaviour. (Earlier measurements of every threshold
also grew by 70-100 MB in the first 100k particles: that was the E-step keeping one GEMM buffer per
chunk width, fixed in :class:`otf2d.engine.em.estep.GemmWorkspace`, not the allocator.) On CUDA, where
the step tensors live on the GPU, the engine's RSS grew +2.8 % and +3.4 % from 20k to 200k (two
runs on an H200), and the GPU memory torch reserved stayed at 478-480 MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: ``malloc_trim(pad) -> int`` of the C library (1: memory was released).
MallocTrim = Callable[[int], int]
#: ``mallopt`` parameter number of the mmap threshold (glibc's ``malloc.h``).
M_MMAP_THRESHOLD = -3
#: The largest mmap threshold glibc accepts on 64-bit systems (``HEAP_MAX_SIZE / 2``).
MAX_MMAP_THRESHOLD_BYTES = 32 * 2**20


def _libc_function(name: str, argtypes: list[type], restype: type, missing: str) -> Callable[..., int] | None:
    """The C library's function ``name`` with its signature, or ``None`` (logged: ``missing``)."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError) as exc:
        log.debug("no %s in the C library (%s): %s", name, exc, missing)
        return None
    function.argtypes = argtypes
    function.restype = restype
    return function


@functools.cache
def malloc_trim_function() -> MallocTrim | None:
    """The C library's ``malloc_trim``, or ``None`` where there is none (looked up once).

    Returns
    -------
    callable or None
        ``malloc_trim(pad)``; ``pad`` bytes are left untrimmed at the top of the main heap.
    """
    return _libc_function("malloc_trim", [ctypes.c_size_t], ctypes.c_int, "freed heap is not handed back to the OS")


@functools.cache
def _mallopt_function() -> Callable[[int, int], int] | None:
    return _libc_function("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int, "the mmap threshold stays as it is")


def set_mmap_threshold(threshold_bytes: int) -> bool:
    """Serve allocations of at least ``threshold_bytes`` with their own ``mmap`` (glibc ``mallopt``).

    A fixed threshold also switches off glibc's dynamic one. Call it once, early: it applies to
    the whole process. Set the environment variable ``MALLOC_MMAP_THRESHOLD_`` instead to choose
    it without code; this function is then not needed.

    Parameters
    ----------
    threshold_bytes
        1 to :data:`MAX_MMAP_THRESHOLD_BYTES`.

    Returns
    -------
    bool
        Whether the C library took it (``False`` where there is no ``mallopt``: musl, macOS).

    Raises
    ------
    ValueError
        If ``threshold_bytes`` is outside 1 .. :data:`MAX_MMAP_THRESHOLD_BYTES`.
    """
    if not 1 <= threshold_bytes <= MAX_MMAP_THRESHOLD_BYTES:
        raise ValueError(f"mmap threshold must be 1 .. {MAX_MMAP_THRESHOLD_BYTES} bytes, got {threshold_bytes}")
    mallopt = _mallopt_function()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))


def trim_heap(*, collect: bool = False) -> bool:
    """Hand the free pages of every malloc arena back to the OS now.

    Parameters
    ----------
    collect
        First run a full garbage collection (``gc.collect()``), so that unreachable cycles holding
        big arrays are freed before the trim. Costs tens of ms in a large process.

    Returns
    -------
    bool
        Whether the C library has ``malloc_trim`` (the trim ran); ``False`` means a no-op.
    """
    if collect:
        gc.collect()
    trim = malloc_trim_function()
    if trim is None:
        return False
    trim(0)
    return True


class HeapTrimmer:
    """Trims the heap (:func:`trim_heap`) at most once per ``min_interval_s``, and only after work.

    The owner calls :meth:`note_work` after anything that allocates a lot (a step, a checkpoint)
    and :meth:`maybe_trim` where a trim is welcome; an engine that stays idle is not trimmed again
    and again.

    Parameters
    ----------
    min_interval_s
        Shortest time between two trims by :meth:`maybe_trim`, seconds; 0 or less disables
        :meth:`maybe_trim` (explicit :meth:`trim` calls still trim).
    clock
        Monotonic seconds.
    trim
        The trim itself (default :func:`trim_heap`); returns whether it could trim.
    """

    def __init__(
        self,
        min_interval_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        trim: Callable[[], bool] = trim_heap,
    ) -> None:
        self.min_interval_s = float(min_interval_s)
        self._clock = clock
        self._trim = trim
        self._last = clock()
        self._worked = False
        #: trims done, and the seconds they took
        self.trims = 0
        self.seconds = 0.0

    def note_work(self) -> None:
        """Something allocated and freed memory since the last trim: the next :meth:`maybe_trim` may trim."""
        self._worked = True

    def trim(self) -> bool:
        """Trim now; returns whether the C library could."""
        start = self._clock()
        done = self._trim()
        end = self._clock()
        self._last = end
        self._worked = False
        if done:
            self.trims += 1
            self.seconds += end - start
            ms = 1e3 * (end - start)
            log.debug("heap trimmed in %.1f ms (%d trims, %.2f s in all)", ms, self.trims, self.seconds)
        return done

    def maybe_trim(self) -> bool:
        """Trim if there was work since the last trim and that was at least ``min_interval_s`` ago.

        Returns
        -------
        bool
            Whether it trimmed.
        """
        if not self._worked or self.min_interval_s <= 0 or self._clock() - self._last < self.min_interval_s:
            return False
        return self.trim()


__all__ = [
    "MAX_MMAP_THRESHOLD_BYTES",
    "M_MMAP_THRESHOLD",
    "HeapTrimmer",
    "MallocTrim",
    "malloc_trim_function",
    "set_mmap_threshold",
    "trim_heap",
]
