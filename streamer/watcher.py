"""Noticing particle files: watchdog events plus a scan of what already exists, into one queue.

- Files of interest: ``**/*_extract.star``, ``**/particles.star``, ``**/*.cs``
  (:func:`otf2d.streamer.gate.file_kind`). ``*.tmp`` is *not* ignored through watchdog's ignore
  patterns, whose default policy drops the ``x.star.tmp → x.star`` rename (formats.md §7);
  events are matched on their destination path instead.
- ``created``, ``moved`` (``dest_path``), ``modified`` and ``closed`` events all just name a path;
  the ledger decides whether it is new or changed. A directory created or moved in is scanned,
  since files written into it before its inotify watch existed produce no event.
- inotify by default; the polling observer where ``/proc/mounts`` says the directory is on a
  network or FUSE filesystem (``nfs*``, ``cifs``, ``smb*``, ``fuse.*``, ``gpfs``, ``lustre``), whose
  remote writes inotify does not see, or when forced.
- :meth:`Watcher.start` starts the observers and *then* scans, so no file slips between.
"""

from __future__ import annotations

import logging
import os
import queue
import warnings
from pathlib import Path

from watchdog.events import DirCreatedEvent, DirMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from otf2d.core.errors import ConfigError
from otf2d.streamer.gate import file_kind

log = logging.getLogger(__name__)

#: Filesystem types (prefixes) on which inotify misses changes made by other hosts.
NETWORK_FS_PREFIXES = ("nfs", "cifs", "smb", "fuse.", "fuseblk", "gpfs", "lustre", "sshfs", "9p", "ceph")

OBSERVER_KINDS = ("auto", "inotify", "polling")


def _unescape_mount(field: str) -> str:
    """``/proc/mounts`` writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def filesystem_type(path: str | os.PathLike[str], mounts_file: str = "/proc/mounts") -> str | None:
    """Type of the filesystem holding ``path`` (longest matching mount point), or ``None`` if unknown."""
    target = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open(mounts_file, encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount_point = _unescape_mount(parts[1])
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, best_type = mount_point, parts[2]
    except OSError:
        return None
    return best_type


def is_network_fs(fs_type: str | None) -> bool:
    """Whether inotify cannot be trusted on a filesystem of this type."""
    return fs_type is not None and fs_type.startswith(NETWORK_FS_PREFIXES)


def choose_observer(path: str | os.PathLike[str], requested: str = "auto", mounts_file: str = "/proc/mounts") -> str:
    """``"inotify"`` or ``"polling"`` for watching ``path``.

    Parameters
    ----------
    requested
        ``auto`` (polling on network filesystems, else inotify), ``inotify`` or ``polling``.
    """
    if requested not in OBSERVER_KINDS:
        raise ConfigError(None, f"observer must be one of {OBSERVER_KINDS}, got {requested!r}")
    if requested != "auto":
        return requested
    return "polling" if is_network_fs(filesystem_type(path, mounts_file)) else "inotify"


def make_observer(kind: str, poll_interval_s: float) -> BaseObserver:
    """A watchdog observer of ``kind`` (``inotify`` falls back to the platform default off Linux)."""
    if kind == "polling":
        return PollingObserver(timeout=poll_interval_s)
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:  # pragma: no cover - not Linux
        from watchdog.observers import Observer

        return Observer()
    return InotifyObserver()


class _Handler(FileSystemEventHandler):
    def __init__(self, sink: queue.SimpleQueue[str]) -> None:
        super().__init__()
        self.sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("deleted", "opened", "closed_no_write", "attrib"):
            return
        raw = event.dest_path if event.event_type == "moved" and event.dest_path else event.src_path
        path = os.fsdecode(raw)
        if isinstance(event, DirCreatedEvent | DirMovedEvent):
            self.sink.put(path)  # the daemon scans it
        elif not event.is_directory and file_kind(path) is not None:
            self.sink.put(path)


def scan(directory: str | os.PathLike[str]) -> list[str]:
    """Every particle file under ``directory`` (recursively), sorted."""
    found: list[str] = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in sorted(files) if file_kind(name) is not None)
    return found


class Watcher:
    """Watch directories for particle files; paths arrive in :attr:`events`.

    Parameters
    ----------
    directories
        Watched recursively.
    observer
        ``auto``, ``inotify`` or ``polling`` (see :func:`choose_observer`).
    poll_interval_s
        Polling observer's interval.

    Attributes
    ----------
    events
        Paths of files (and of new directories, to be scanned) in the order noticed; the same
        path may come several times.
    kinds
        Observer kind per directory.
    """

    def __init__(self, directories: list[Path], *, observer: str = "auto", poll_interval_s: float = 1.0) -> None:
        for d in directories:
            if not Path(d).is_dir():
                raise ConfigError(d, "watched directory does not exist")
        self.directories = [Path(d) for d in directories]
        self.events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.kinds = {d: choose_observer(d, observer) for d in self.directories}
        self.poll_interval_s = poll_interval_s
        self._observers: list[BaseObserver] = []

    def start(self) -> int:
        """Start the observers, then queue every file that already exists; returns how many were found."""
        handler = _Handler(self.events)
        # watchdog 7.1's inotify emitter warns about its own bookkeeping when a watched tree gains
        # directories; harmless, and noisy in a daemon's log.
        warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)
        for directory, kind in self.kinds.items():
            obs = make_observer(kind, self.poll_interval_s)
            obs.schedule(handler, str(directory), recursive=True)
            obs.start()
            self._observers.append(obs)
            log.info("watching %s (%s)", directory, kind)
        return self.scan()

    def scan(self) -> int:
        """Queue every particle file under the watched directories; returns how many."""
        n = 0
        for directory in self.directories:
            for path in scan(directory):
                self.events.put(path)
                n += 1
        return n

    def stop(self) -> None:
        """Stop and join the observers."""
        for obs in self._observers:
            obs.stop()
        for obs in self._observers:
            obs.join(timeout=5.0)
        self._observers.clear()


__all__ = ["NETWORK_FS_PREFIXES", "Watcher", "choose_observer", "filesystem_type", "is_network_fs", "scan"]
