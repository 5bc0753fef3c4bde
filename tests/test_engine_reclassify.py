"""Idle-time reclassification: once arrivals stop, the engine's classes are ``otf2d classify``'s.

A real session (journal on disk), the real online-EM classifier behind the engine's port, and the
folder driven by hand as the worker drives it: initialise, fold, then idle steps. The reference is
``classify_batches`` (what ``otf2d classify`` runs) on the same particles in the same order.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from engine_helpers import make_batch

from otf2d.core.config import Class2DParams
from otf2d.engine.em.driver import (
    ClassificationResult,
    classify_batches,
    planned_work,
    quick_start_params,
)
from otf2d.engine.serving.em_adapter import EmClassifier, em_classifier_factory, stable_class_order
from otf2d.engine.serving.folding import SessionFolder
from otf2d.engine.serving.metrics import EngineMetrics
from otf2d.engine.serving.session import Session
from otf2d.engine.serving.worker import Worker, WorkerConfig
from otf2d.engine.storage.journal import JournalParticles

PARAMS = Class2DParams(n_classes=3, batch_size_per_class=8, online_em_iterations=3, seed=4)


def _append(session: Session, first_micrograph: int, micrographs: int, per_micrograph: int = 12) -> None:
    for m in range(first_micrograph, first_micrograph + micrographs):
        header = {"msg_id": f"m{m}", "file_ready_time": time.time(), "source": f"mic{m}.star"}
        session.journal.append_many([(header, make_batch("s", m, per_micrograph))])


def _streaming_folder(tmp_path: Path, micrographs: int) -> SessionFolder:
    session = Session.create(tmp_path / "sessions", "s", PARAMS)
    _append(session, 0, micrographs)
    folder = SessionFolder(session, em_classifier_factory, torch.device("cpu"))
    folder.initialise()
    while folder.pending:
        folder.fold(16)
    return folder


def _idle_until_done(folder: SessionFolder) -> int:
    steps = 0
    while folder.wants_idle_work():
        folder.idle_step()
        steps += 1
        if folder.refolding:
            return steps
    return steps


def _assert_classes_are_batch(folder: SessionFolder, reference: ClassificationResult) -> None:
    """The stored assignments and the classes are the reference's, up to the renumbering that keeps
    the old class numbers (``stable_class_order``)."""
    stored = folder.session.journal.assignments()
    ref = reference.particles
    number_of = {}
    for c in np.unique(ref.class_index):
        ours = np.unique(stored.class_index[ref.class_index == c])
        assert len(ours) == 1, f"reference class {c} is split over engine classes {ours}"
        number_of[int(c)] = int(ours[0])
    assert len(set(number_of.values())) == len(number_of)
    np.testing.assert_allclose(stored.psi_degrees, ref.psi_degrees, atol=1e-4)
    classifier = cast(EmClassifier, folder.classifier).classifier
    for c, engine_class in number_of.items():
        np.testing.assert_allclose(
            classifier.class_averages()[engine_class].numpy(),
            reference.classifier.class_averages()[c].numpy(),
            atol=1e-5,
        )


def test_stable_class_order_keeps_the_numbers_of_the_classes_that_share_most_particles() -> None:
    previous = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])
    new = np.array([2, 2, 1, 0, 0, 3, 3, 3, 1])  # old 0 -> new 2, old 1 -> new 0, old 2 -> new 3, old 3 -> new 1
    order = stable_class_order(previous, new, 4)
    np.testing.assert_array_equal(order, [2, 0, 3, 1])
    # a new class that shares nothing takes a number left over; every number is used once
    order = stable_class_order(np.array([0, 0, 1]), np.array([3, 3, 3]), 4)
    assert order[0] == 3 and sorted(order.tolist()) == [0, 1, 2, 3]


def test_permuting_the_classes_permutes_what_the_e_step_sees(tmp_path: Path) -> None:
    folder = _streaming_folder(tmp_path, micrographs=3)
    classifier = cast(EmClassifier, folder.classifier).classifier
    batch = folder.session.journal.read(0, 36).batch
    before = classifier.assign(batch)
    order = torch.tensor([2, 0, 1])
    classifier.permute_classes(order)
    after = classifier.assign(batch)
    np.testing.assert_array_equal(order[after.class_index].numpy(), before.class_index.numpy())
    with pytest.raises(ValueError, match="not a permutation"):
        classifier.permute_classes(torch.tensor([0, 0, 1]))


def test_journal_particles_take_any_positions_in_the_order_asked(tmp_path: Path) -> None:
    session = Session.create(tmp_path / "sessions", "s", PARAMS)
    _append(session, 0, 3)
    source = JournalParticles(session.journal, 30)
    assert len(source) == 30
    everything = session.journal.read(0, 30).batch
    index = np.array([17, 3, 4, 5, 29, 0, 18])
    taken = source.take(index)
    np.testing.assert_array_equal(taken.images, everything.images[index])
    np.testing.assert_array_equal(taken.indices, everything.indices[index])
    np.testing.assert_array_equal(taken.ctf.defocus_u_angstrom, everything.ctf.defocus_u_angstrom[index])
    with pytest.raises(IndexError, match=r"\[0, 30\)"):
        source.take([30])


def test_after_arrivals_stop_the_classes_are_those_of_otf2d_classify(tmp_path: Path) -> None:
    folder = _streaming_folder(tmp_path, micrographs=5)
    assert folder.wants_idle_work()
    steps = _idle_until_done(folder)
    assert steps >= 1 + 1 + PARAMS.online_em_iterations + 1  # prepare, init, online iterations, the full pass
    assert not folder.wants_idle_work() and not folder.refolding
    assert folder.consumed == folder.reclassified_end == 60
    reference = classify_batches(JournalParticles(folder.session.journal, 60), PARAMS)
    _assert_classes_are_batch(folder, reference)


def test_particles_that_arrive_during_a_reclassification_are_folded_again_then_reclassified(
    tmp_path: Path,
) -> None:
    folder = _streaming_folder(tmp_path, micrographs=4)
    folder.idle_step()  # the run over the 48 folded particles begins
    _append(folder.session, 4, 2)
    folder.fold(64)
    assert folder.consumed == folder.high_water == 72
    _idle_until_done(folder)
    # adopted: the 24 particles folded during the run go into the new classes again
    assert folder.reclassified_end == 48 and folder.consumed == 48 and folder.refolding and folder.pending == 24
    folder.fold(64)
    assert folder.consumed == folder.high_water == 72 and not folder.refolding
    assert folder.wants_idle_work()  # 72 folded, 48 reclassified: another run
    _idle_until_done(folder)
    assert folder.reclassified_end == folder.consumed == 72 and not folder.wants_idle_work()
    _assert_classes_are_batch(folder, classify_batches(JournalParticles(folder.session.journal, 72), PARAMS))


def test_a_checkpoint_remembers_what_was_reclassified(tmp_path: Path) -> None:
    folder = _streaming_folder(tmp_path, micrographs=4)
    _idle_until_done(folder)
    folder.checkpoint()
    again = SessionFolder(folder.session, em_classifier_factory, torch.device("cpu"))
    assert again.restore()
    assert again.reclassified_end == again.consumed == 48
    assert not again.wants_idle_work()


class _IdleFolder:
    """What the worker reads of a folder to choose idle work."""

    def __init__(self, name: str, wants: bool, running: bool) -> None:
        self.name = name
        self.wants = wants
        self.reclassification = object() if running else None

    def wants_idle_work(self) -> bool:
        return self.wants


def test_the_worker_finishes_one_reclassification_before_starting_another(tmp_path: Path) -> None:
    worker = Worker(WorkerConfig(), em_classifier_factory, torch.device("cpu"), EngineMetrics(), None)  # type: ignore[arg-type]
    a, b, c = _IdleFolder("a", True, False), _IdleFolder("b", True, True), _IdleFolder("c", False, False)
    folders = cast(list[SessionFolder], [a, b, c])
    worker.folders = lambda: folders  # type: ignore[method-assign]
    assert [worker._next_idle_folder() for _ in range(3)] == [b, b, b]  # b's run goes on
    b.reclassification = None
    chosen = [worker._next_idle_folder() for _ in range(4)]  # then a and b take turns; c wants nothing
    assert set(chosen) == {a, b} and chosen[0] is not chosen[1]
    a.wants = b.wants = False
    assert worker._next_idle_folder() is None


def test_a_failed_session_drops_its_reclassification(tmp_path: Path) -> None:
    folder = _streaming_folder(tmp_path, micrographs=3)
    folder.idle_step()
    assert folder.reclassification is not None
    folder.fail(RuntimeError("the classifier broke"))
    assert folder.reclassification is None and not folder.wants_idle_work()


def test_the_quick_start_does_less_work_and_leaves_a_session_classifier_that_checkpoints(tmp_path: Path) -> None:
    """The quick start (an engine that reclassifies in idle time) puts fewer particles through the
    E-step than the full initial schedule; afterwards the classifier carries the session's parameters,
    is past the initial schedule (temperature 1, no reseeding, the step size of the full schedule's end
    while folding) and its checkpoint loads into a fresh classifier of the session."""
    params = Class2DParams(
        n_classes=3, batch_size_per_class=30, online_em_iterations=8, noise_anneal_iterations=4, seed=4
    )
    batch = make_batch("s", 0, 90)
    quick = quick_start_params(params)
    assert planned_work(len(batch), quick) < planned_work(len(batch), params) / 2
    end = params.online_em_iterations + params.final_full_iterations
    for is_quick in (True, False):
        em = em_classifier_factory(params, batch.box_size, batch.pixel_size_angstrom, torch.device("cpu"))
        record = em.initialise(batch, quick=is_quick)
        assert len(record.class_index) == len(batch)
        classifier = em.classifier
        assert classifier.params == params
        assert classifier.iteration == classifier.n_updates == end
        assert classifier.temperature() == 1.0
        fresh = EmClassifier(params, batch.box_size, batch.pixel_size_angstrom, torch.device("cpu"))
        fresh.restore(em.state())
        np.testing.assert_array_equal(fresh.classifier.class_averages().numpy(), classifier.class_averages().numpy())
