"""One session's folding state: which journal particles are in the classes, and the classifier.

Phases:

``collecting``
    Fewer than ``n_classes × batch_size_per_class`` particles journaled: nothing is classified.
``streaming``
    The classes were initialised from the first ``n_classes × batch_size_per_class`` journal
    particles; every later particle is folded in exactly once, in journal order.
``failed``
    The classifier raised; the session keeps journaling but folds nothing more (see ``error``).

``consumed`` is the journal position folded so far. A checkpoint stores it together with the
classifier state, so a restart restores the checkpoint and folds only the journal beyond it: every
journaled particle is counted exactly once, whenever the engine was killed.

Idle time reclassifies (``wants_idle_work``/``idle_step``): when nothing waits to be folded, the
folder classifies every particle folded so far from scratch, exactly as ``otf2d classify`` does
(``ClassifierPort.reclassify``), one piece of work per idle round, so arrivals are folded in between.
When the run is done its classes replace the streaming ones, every particle it covered gets its new
assignment, and the particles that arrived during the run are folded again into the new classes
(``consumed`` goes back to the run's end; ``high_water`` remembers what was folded before, so that
metrics count each particle once). A new run starts whenever more particles were folded than the
last run covered: once arrivals stop, the classes are those of ``otf2d classify`` on the same
particles (issue 12, "streaming equals batch").
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otf2d.core.errors import InputError
from otf2d.core.snapshot import AssignmentRecord, ClassSnapshot, ParticleAssignments
from otf2d.engine.serving.classifier_port import ClassifierFactory, ClassifierPort, Reclassification
from otf2d.engine.serving.session import Session, params_to_dict
from otf2d.engine.storage.checkpoint import (
    flatten_state,
    previous_path,
    readable_checkpoints,
    save_checkpoint,
    set_aside,
    unflatten_state,
)
from otf2d.engine.storage.journal import JournalParticles, JournalSlice

log = logging.getLogger(__name__)


def latest_snapshot_iteration(snapshot_dir: Path) -> int:
    """The highest ``run_itNNN`` written in ``snapshot_dir`` (0 when there is none)."""
    best = 0
    for path in snapshot_dir.glob("run_it*_model.star"):
        digits = path.name.removeprefix("run_it").removesuffix("_model.star")
        if digits.isdigit():
            best = max(best, int(digits))
    return best


class Phase(StrEnum):
    """Where a session's classification is."""

    COLLECTING = "collecting"
    STREAMING = "streaming"
    FAILED = "failed"


class SessionFolder:
    """Folds one session's journal into its classes (used by the worker thread only).

    Parameters
    ----------
    session
        The session (journal, parameters, folders).
    factory
        Makes the session's classifier once the box and pixel size are known.
    device
        Where the classifier's tensors live.
    """

    def __init__(self, session: Session, factory: ClassifierFactory, device: torch.device) -> None:
        self.session = session
        self.factory = factory
        self.device = device
        self.classifier: ClassifierPort | None = None
        self.phase = Phase.COLLECTING
        self.consumed = 0
        #: The most particles ever folded (``consumed`` goes back when a reclassification is adopted).
        self.high_water = 0
        #: Journal positions covered by the last finished reclassification (0: none yet).
        self.reclassified_end = 0
        #: The reclassification under way, and the journal position it ends at.
        self.reclassification: Reclassification | None = None
        self.reclassification_end = 0
        self.snapshot_iteration = 0
        self.error: str | None = None
        #: Not before this unix time is a failed checkpoint tried again.
        self.checkpoint_retry_at = 0.0
        #: Judgements of particles folded in but not yet stored (the store failed: a full disk).
        self._unstored: tuple[np.ndarray, AssignmentRecord] | None = None
        self.initialising = False
        self.checkpoint_consumed = 0
        self.checkpoint_time = time.time()
        self.snapshot_consumed = 0
        self.snapshot_time = time.time()
        self.judged_since_snapshot = 0
        self.snapshot_iteration = latest_snapshot_iteration(session.snapshot_dir)

    # ------------------------------------------------------------------ state

    @property
    def name(self) -> str:
        """The session name."""
        return self.session.name

    @property
    def n_init(self) -> int:
        """Particles needed before the classes are initialised."""
        params = self.session.params
        return params.n_classes * params.batch_size_per_class

    @property
    def pending(self) -> int:
        """Journaled particles not folded in yet."""
        return max(0, self.session.journal.count - self.consumed)

    def ready_to_initialise(self) -> bool:
        """Collecting, and enough particles journaled."""
        return self.phase is Phase.COLLECTING and self.session.journal.count >= self.n_init

    def has_work(self) -> bool:
        """Something to initialise or fold now."""
        if self.session.paused or self.phase is Phase.FAILED:
            return False
        return self.ready_to_initialise() or (self.phase is Phase.STREAMING and self.pending > 0)

    def fail(self, exc: BaseException) -> None:
        """Stop folding this session after an error in the classifier."""
        self.phase = Phase.FAILED
        self.error = f"{type(exc).__name__}: {exc}"
        self.reclassification = None  # and the particles it had prepared
        log.exception("session %s: classification failed; journaling continues, folding stops", self.name)

    def _new_classifier(self) -> ClassifierPort:
        box = self.session.journal.box
        pixel = self.session.journal.pixel_size_angstrom
        if box is None or pixel is None:
            raise InputError(None, f"session {self.name}: no particles yet, box unknown")
        return self.factory(self.session.params, box, pixel, self.device)

    def _store(self, seqs: np.ndarray, judgements: AssignmentRecord) -> None:
        if not isinstance(judgements, AssignmentRecord):
            raise RuntimeError(f"classifier returned no AssignmentRecord but a {type(judgements).__name__}")
        if len(judgements) != len(seqs):
            raise RuntimeError(f"classifier returned {len(judgements)} assignments for {len(seqs)} particles")
        self.session.journal.store_assignments(seqs, judgements)
        self.judged_since_snapshot += len(seqs)

    # ------------------------------------------------------------------ steps

    def initialise(self, *, quick: bool = False) -> JournalSlice:
        """Initialise the classes from the first ``n_init`` journal particles; returns them.

        ``quick``: the classifier's quick start (the engine reclassifies in idle time, so the first
        classes only have to come soon).

        From here on the session's parameters are fixed (``initialising`` is set under the
        session's lock, which ``start_session`` takes before changing them).
        """
        with self.session.lock:
            self.initialising = True
            n_init = self.n_init
        part = self.session.journal.read(0, n_init)
        classifier = self._new_classifier()
        judgements = classifier.initialise(part.batch, quick=quick)
        self.classifier = classifier
        self.consumed = self.high_water = n_init
        self.phase = Phase.STREAMING
        log.info("session %s: classes initialised from %d particles", self.name, n_init)
        self._unstored = (part.seqs, judgements)
        self.flush_judgements()
        return part

    def fold(self, max_particles: int) -> JournalSlice:
        """Fold the next (at most ``max_particles``) journal particles in; returns them."""
        if self.classifier is None:
            raise RuntimeError(f"session {self.name} is not streaming")
        self.flush_judgements()
        part = self.session.journal.read(self.consumed, self.consumed + max_particles)
        judgements = self.classifier.fold(part.batch)
        self.consumed += len(part)  # in the classes now, whether or not the judgements can be stored
        self.high_water = max(self.high_water, self.consumed)
        self._unstored = (part.seqs, judgements)
        self.flush_judgements()
        return part

    @property
    def has_unstored(self) -> bool:
        """Whether judgements wait to be stored (their store failed before)."""
        return self._unstored is not None

    def flush_judgements(self) -> None:
        """Store judgements whose store failed before (a full disk); raises while it still fails."""
        if self._unstored is not None:
            self._store(*self._unstored)
            self._unstored = None

    @property
    def refolding(self) -> bool:
        """Particles folded before the last adopted reclassification wait to be folded into its classes."""
        return self.consumed < self.high_water

    def wants_idle_work(self) -> bool:
        """A reclassification is under way, or more particles were folded than the last one covered."""
        if self.phase is not Phase.STREAMING or self.session.paused or self.classifier is None:
            return False
        return self.reclassification is not None or self.consumed > self.reclassified_end

    def idle_step(self) -> int:
        """Start or advance the reclassification (adopting it when done); returns the particles it went through."""
        if self.classifier is None:
            return 0
        if self.reclassification is None:
            self.reclassification_end = self.consumed
            self.reclassification = self.classifier.reclassify(JournalParticles(self.session.journal, self.consumed))
            log.info("session %s: reclassifying the %d particles folded so far", self.name, self.consumed)
        job = self.reclassification
        n = job.advance()
        if job.done:
            self.reclassification = None
            self._adopt(job)
        return n

    def _adopt(self, job: Reclassification) -> None:
        """The finished reclassification's classes become the session's (see the module docstring)."""
        end = self.reclassification_end
        before = self.session.journal.assignments(stop=end).class_index
        judgements = job.finish(before if len(before) == end else None)  # all of them were judged before
        self._unstored = (np.arange(end, dtype=np.int64), judgements)
        self.reclassified_end = end
        self.consumed = end  # the particles folded since the run began are folded again, into the new classes
        log.info(
            "session %s: classes reclassified from %d particles; %d to fold again",
            self.name,
            end,
            self.high_water - end,
        )
        self.flush_judgements()

    # ------------------------------------------------------------------ checkpoint

    def checkpoint(self) -> int:
        """Write the checkpoint now; returns its size in bytes (0: not written, the session failed).

        A failed session keeps its last good checkpoint: its classifier may hold a half-done step.
        """
        if self.phase is Phase.FAILED:
            return 0
        arrays: dict[str, np.ndarray] = {}
        state = flatten_state(self.classifier.state(), arrays) if self.classifier is not None else None
        meta: dict[str, Any] = {
            "session": self.name,
            "phase": self.phase.value,
            "consumed": self.consumed,
            "journal_count": self.session.journal.count,
            "reclassified_end": self.reclassified_end,
            "snapshot_iteration": self.snapshot_iteration,
            "params": params_to_dict(self.session.params),
            "classifier": state,
            "saved_at": time.time(),
        }
        size = save_checkpoint(self.session.checkpoint_path, meta, arrays)
        self.checkpoint_consumed = self.consumed
        self.checkpoint_time = time.time()
        return size

    def restore(self) -> bool:
        """Continue from the session's newest usable checkpoint; returns whether there was one.

        A checkpoint that cannot be read (empty, truncated, corrupt) or used (it claims more folded
        particles than the journal holds, or its state does not fit the classifier) falls back to the
        previous one; with none usable, the unusable files are set aside (renamed, kept) and the
        session replays its journal from the start: slower, never wedged.
        """
        path = self.session.checkpoint_path
        readable, errors = readable_checkpoints(path)
        for candidate, meta, arrays in readable:
            try:
                self._apply_checkpoint(meta, arrays)
            except (InputError, KeyError, ValueError, TypeError, RuntimeError) as exc:
                log.error("session %s: checkpoint %s cannot be used (%s)", self.name, candidate.name, exc)
                errors.append(f"{candidate.name}: {exc}")
                continue
            if candidate != path:
                log.warning("session %s: restored the previous checkpoint %s", self.name, candidate.name)
            return True
        if errors:
            for candidate in (path, previous_path(path)):
                set_aside(candidate, "; ".join(errors))
            log.error("session %s: no usable checkpoint; replaying the journal from the start", self.name)
        return False

    def _apply_checkpoint(self, meta: dict[str, Any], arrays: dict[str, Any]) -> None:
        """Take the folding state of one checkpoint (nothing changes when it raises)."""
        consumed = int(meta["consumed"])
        if consumed > self.session.journal.count:
            raise InputError(
                self.session.checkpoint_path,
                f"checkpoint has {consumed} particles folded but the journal holds only {self.session.journal.count}",
            )
        if meta.get("params") != params_to_dict(self.session.params):
            log.warning("session %s: checkpoint parameters differ from session.json; using session.json", self.name)
        phase = Phase(meta["phase"])
        if phase is Phase.STREAMING:
            classifier = self._new_classifier()
            # tensors come back on the CPU: the classifier moves them (its RNG state must stay there)
            classifier.restore(unflatten_state(meta["classifier"], arrays, "cpu"))
            self.classifier = classifier
        self.phase = phase
        self.consumed = self.high_water = consumed
        self.reclassified_end = min(int(meta.get("reclassified_end", 0)), consumed)
        self.reclassification = None
        self.snapshot_iteration = max(self.snapshot_iteration, int(meta.get("snapshot_iteration", 0)))
        self.checkpoint_consumed = consumed
        self.snapshot_consumed = consumed
        log.info(
            "session %s: restored checkpoint (%s, %d folded, %d journaled: %d to replay)",
            self.name,
            phase.value,
            consumed,
            self.session.journal.count,
            self.session.journal.count - consumed,
        )

    # ------------------------------------------------------------------ snapshots

    def begin_snapshot(self) -> int:
        """Number the next snapshot and mark the folding state it stands for; returns its iteration."""
        self.snapshot_iteration += 1
        self.snapshot_consumed = self.consumed
        self.snapshot_time = time.time()
        self.judged_since_snapshot = 0
        return self.snapshot_iteration

    def snapshot(self, particles: ParticleAssignments, iteration: int) -> ClassSnapshot:
        """The classes now with ``particles`` (call on the worker thread: it reads the classifier)."""
        if self.classifier is None:
            raise RuntimeError(f"session {self.name} has no classes yet")
        return self.classifier.snapshot(particles, iteration=iteration, optics=self.session.journal.optics_groups())

    def describe(self) -> dict[str, Any]:
        """A JSON-able status of the folding."""
        return {
            "phase": self.phase.value,
            "particles_classified": self.high_water,
            "queue_depth": self.pending if self.phase is not Phase.COLLECTING else self.session.journal.count,
            "initial_particles_needed": self.n_init,
            "reclassified_particles": self.reclassified_end,
            "reclassifying": self.reclassification is not None,
            "snapshot_iteration": self.snapshot_iteration,
            "last_checkpoint_time": self.checkpoint_time,
            "last_checkpoint_particles": self.checkpoint_consumed,
            "error": self.error,
        }


__all__ = ["Phase", "SessionFolder"]
