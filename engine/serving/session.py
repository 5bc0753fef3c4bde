"""Sessions: a name, its classification parameters, and its own folder under ``<data>/sessions/``.

::

    <data>/sessions/<dir>/session.json      name, parameters, project_dir, owner, created (atomic)
    <data>/sessions/<dir>/journal/          the journal and particle cache (otf2d.engine.storage.journal)
    <data>/sessions/<dir>/checkpoint.npz    the newest checkpoint (otf2d.engine.storage.checkpoint)
    <data>/sessions/<dir>/snapshots/        RELION / cryoSPARC / PNG snapshots + latest.json

``<dir>`` is the session name when it is a plain file name (letters, digits, ``._-``, at most 100
characters, not starting with a dot), otherwise a sanitised prefix plus a hash of the name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otf2d.core.config import Class2DParams, from_mapping
from otf2d.core.durable import fsync_directory, write_json_atomic
from otf2d.core.errors import ConfigError, InputError
from otf2d.engine.storage.journal import Journal

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")
#: Keys of ``start_session`` params that are session options, not classification parameters.
SESSION_OPTIONS = ("project_dir", "box_size", "pixel_size_angstrom")


def session_directory_name(name: str) -> str:
    """The folder name of session ``name`` (see the module docstring)."""
    if _PLAIN_NAME.match(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
    prefix = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:40].strip("_") or "session"
    return f"{prefix}-{digest}"


def params_to_dict(params: Class2DParams) -> dict[str, Any]:
    """The parameters as a JSON-able dict."""
    return dataclasses.asdict(params)


def params_from_dict(values: dict[str, Any], where: str) -> Class2DParams:
    """Validated parameters from a JSON object (``null`` = the field's default, which is ``None``).

    ``otf2d.core.config.from_mapping`` reads TOML, which has no null: ``None`` values are left out before
    validation and must then come back as the field's default.

    Raises
    ------
    ConfigError
        An unknown key, a value of the wrong type or range, or a ``null`` where the default is not.
    """
    params = from_mapping(Class2DParams, {k: v for k, v in values.items() if v is not None}, where)
    resolved = params_to_dict(params)
    bad = sorted(k for k, v in values.items() if v is None and resolved.get(k) is not None)
    if bad:
        raise ConfigError(None, f"{where}: {bad} cannot be null")
    return params


def merge_params(defaults: Class2DParams, overrides: dict[str, Any], where: str) -> Class2DParams:
    """``defaults`` with the keys of ``overrides`` replaced, validated.

    Raises
    ------
    ConfigError
        An unknown key or a value of the wrong type or range (the message names it).
    """
    return params_from_dict({**params_to_dict(defaults), **overrides}, where)


@dataclass
class Session:
    """One collection session: name, parameters, folders and journal.

    The folding state (classifier, journal position folded so far) belongs to the worker
    (:class:`otf2d.engine.serving.folding.SessionFolder`); the flags here are shared with the server thread.
    """

    name: str
    root: Path
    params: Class2DParams
    journal: Journal
    project_dir: str | None = None
    #: Public key (Z85) of the CurveZMQ client that created the session; only it may write to the
    #: session. ``None``: created without CURVE (a loopback or ``--insecure`` engine): open to all.
    owner: str | None = None
    created: float = field(default_factory=time.time)
    paused: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def checkpoint_path(self) -> Path:
        """``<root>/checkpoint.npz``."""
        return self.root / "checkpoint.npz"

    @property
    def snapshot_dir(self) -> Path:
        """``<root>/snapshots``."""
        return self.root / "snapshots"

    def writable_by(self, client: str | None) -> str:
        """Why ``client`` (a CURVE public key, or ``None``) may not write to this session ("" when it may)."""
        if self.owner is None or client == self.owner:
            return ""
        return f"session {self.name!r} belongs to another client key; this key may read its status only"

    def save(self) -> None:
        """Write ``session.json`` (atomically)."""
        write_json_atomic(
            self.root / "session.json",
            {
                "name": self.name,
                "params": params_to_dict(self.params),
                "project_dir": self.project_dir,
                "owner": self.owner,
                "created": self.created,
            },
            sort_keys=True,
            newline=False,
        )

    @classmethod
    def create(
        cls,
        sessions_dir: Path,
        name: str,
        params: Class2DParams,
        *,
        project_dir: str | None = None,
        cache_dtype: str = "float16",
        owner: str | None = None,
    ) -> Session:
        """Make the session's folder, write ``session.json`` and open an empty journal."""
        root = sessions_dir / session_directory_name(name)
        if (root / "session.json").exists():
            raise InputError(root, f"session {name!r} already exists")
        root.mkdir(parents=True, exist_ok=True)
        fsync_directory(sessions_dir)
        journal = Journal(root / "journal", name, cache_dtype=cache_dtype)
        session = cls(name=name, root=root, params=params, journal=journal, project_dir=project_dir, owner=owner)
        session.save()
        return session

    @classmethod
    def open(cls, root: Path, *, cache_dtype: str = "float16") -> Session:
        """Open an existing session folder.

        Raises
        ------
        InputError
            ``session.json`` is missing or invalid.
        """
        path = root / "session.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            name = record["name"]
            params = params_from_dict(record["params"], "params")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(path, f"not a valid session record ({exc})") from exc
        except ConfigError as exc:
            raise InputError(path, exc.what) from exc
        journal = Journal(root / "journal", name, cache_dtype=cache_dtype)
        return cls(
            name=name,
            root=root,
            params=params,
            journal=journal,
            project_dir=record.get("project_dir"),
            owner=record.get("owner"),
            created=float(record.get("created", time.time())),
        )


def find_sessions(sessions_dir: Path) -> list[Path]:
    """Session folders (those holding a ``session.json``) under ``sessions_dir``, sorted."""
    if not sessions_dir.is_dir():
        return []
    return sorted(p.parent for p in sessions_dir.glob("*/session.json"))


__all__ = [
    "SESSION_OPTIONS",
    "Session",
    "find_sessions",
    "merge_params",
    "params_from_dict",
    "params_to_dict",
    "session_directory_name",
]
