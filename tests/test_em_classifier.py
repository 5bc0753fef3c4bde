"""The online-EM classifier end to end on synthetic particles with known templates.

Ground truth: 4 Gaussian-blob templates (``em_synthetic``), particles rotated by multiples of the
angular step, shifted by whole pixels, CTF-affected, with Gaussian noise. A classifier that works
must find every template (a class that correlates with it after rotational alignment) and put
particles of one template together; a random or broken one cannot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from em_synthetic import SyntheticSet, best_rotational_correlation, make_particles, random_templates, render

from otf2d.core.config import Class2DParams
from otf2d.core.snapshot import ClassSnapshot
from otf2d.engine.em import driver
from otf2d.engine.em.classifier import Classifier, TensorBatch
from otf2d.engine.em.driver import BatchList, ClassificationResult, Progress, classify_batches
from otf2d.engine.em.estep import GemmWorkspace
from otf2d.engine.em.schedule import posterior_temperature, step_size

BOX, PIXEL, STEP = 32, 3.0, 15.0


def _params(**kw: object) -> Class2DParams:
    base: dict[str, object] = {
        "n_classes": 8,
        "max_resolution_angstrom": 2 * PIXEL,
        "in_plane_step_degrees": STEP,
        "max_shift_angstrom": PIXEL,
        "online_em_iterations": 12,
        "batch_size_per_class": 30,
        "force_max_over_poses": True,
        "seed": 0,
    }
    base.update(kw)
    return Class2DParams(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data() -> SyntheticSet:
    rng = np.random.default_rng(11)
    templates = random_templates(4, BOX, rng)
    return make_particles(400, templates, BOX, PIXEL, rng, psi_step_degrees=STEP, max_shift_px=1, noise_std=0.3)


@pytest.fixture(scope="module")
def result(data: SyntheticSet) -> ClassificationResult:
    return classify_batches(data.batch, _params())


def _confusion(result: ClassificationResult, data: SyntheticSet, k: int) -> np.ndarray:
    m = np.zeros((k, len(data.templates)), dtype=int)
    np.add.at(m, (result.assignments.class_index.numpy(), data.template_index), 1)
    return m


@pytest.mark.slow
def test_recovers_the_templates(result: ClassificationResult, data: SyntheticSet) -> None:
    k = result.classifier.n_classes
    confusion = _confusion(result, data, k)
    purity = confusion.max(axis=1).sum() / confusion.sum()
    assert purity >= 0.9, f"only {purity:.0%} of particles share a class with their template\n{confusion}"
    averages = result.classifier.class_averages().numpy()
    truth = [render(t, BOX) for t in data.templates]
    for j, template in enumerate(truth):
        members = np.flatnonzero(confusion.argmax(axis=1) == j)
        assert len(members), f"no class holds mostly template {j}"
        best = max(best_rotational_correlation(averages[c], template, STEP) for c in members)
        assert best > 0.9, f"template {j}: best class correlation {best:.3f}"


@pytest.mark.slow
def test_every_particle_ends_with_a_class_pose_and_posterior(result: ClassificationResult, data: SyntheticSet) -> None:
    a = result.assignments
    n = len(data.batch)
    assert len(a) == n and len(result.particles) == n
    assert np.array_equal(result.particles.indices, data.batch.indices)
    assert np.all((a.psi_degrees.numpy() > -180) & (a.psi_degrees.numpy() <= 180))
    origin = np.hypot(a.origin_x_angstrom.numpy(), a.origin_y_angstrom.numpy())
    assert (
        origin.max() <= result.classifier.geometry.max_shift * result.classifier.geometry.internal_pixel_angstrom + 1e-9
    )
    assert np.all((a.class_posterior.numpy() > 0) & (a.class_posterior.numpy() <= 1 + 1e-6))
    assert np.all(a.class_ess.numpy() >= 1 - 1e-6)
    # In-plane angles are recovered up to each class's own orientation: within a pure class the
    # difference to the truth is constant.
    confusion = _confusion(result, data, result.classifier.n_classes)
    for c in np.flatnonzero(confusion.max(axis=1) > 20):
        sel = (a.class_index.numpy() == c) & (data.template_index == confusion[c].argmax())
        d = (a.psi_degrees.numpy()[sel] - data.psi_degrees[sel]) % 360.0
        mode = np.bincount(np.round(d / STEP).astype(int) % round(360 / STEP)).argmax() * STEP
        close = np.abs((d - mode + 180.0) % 360.0 - 180.0) <= STEP + 1e-6
        assert close.mean() > 0.9, f"class {c}: psi consistent for {close.mean():.0%}"
    snap = result.snapshot
    assert isinstance(snap, ClassSnapshot)
    assert snap.averages.shape == (8, BOX, BOX)
    assert snap.particle_counts.sum() == n
    assert np.all(np.diff(snap.particle_counts) <= 0), "snapshot classes are sorted by size"
    mapping = snap.engine_class_order()
    engine_class = np.asarray(mapping)[snap.particles.class_index]
    assert np.array_equal(engine_class, a.class_index.numpy())


def test_schedules() -> None:
    # ICUF: T = ICUF up to the start iteration, linear to 1 over n_anneal iterations.
    assert posterior_temperature(0, 3.0, 2, 10) == 3.0
    assert posterior_temperature(2, 3.0, 2, 10) == 3.0
    assert posterior_temperature(7, 3.0, 2, 10) == pytest.approx(2.0)
    assert posterior_temperature(12, 3.0, 2, 10) == 1.0
    assert posterior_temperature(50, 3.0, 2, 10) == 1.0
    assert posterior_temperature(0, 1.0, 2, 10) == 1.0
    assert step_size(1) == 1.0
    assert 0 < step_size(100) < step_size(10) < 1


def test_batch_size_and_online_iterations_set_the_particles_seen(data: SyntheticSet) -> None:
    for iterations, per_class in ((2, 10), (3, 20)):
        events: list[Progress] = []
        res = classify_batches(
            data.batch.take(np.arange(100)),
            _params(
                n_classes=4, online_em_iterations=iterations, batch_size_per_class=per_class, final_full_iterations=0
            ),
            progress=events.append,
        )
        assert res.online_particles_seen == iterations * per_class * 4
        online = [e for e in events if e.phase == "online"]
        assert [e.particles_seen for e in online] == [per_class * 4 * (i + 1) for i in range(iterations)]
        assert len(res.assignments) == 100


@pytest.mark.slow
def test_deterministic_on_cpu_for_a_seed(data: SyntheticSet) -> None:
    params = _params(n_classes=4, online_em_iterations=3, batch_size_per_class=20)
    sub = data.batch.take(np.arange(120))
    a = classify_batches(sub, params)
    b = classify_batches(BatchList([sub.take(np.arange(50)), sub.take(np.arange(50, 120))]), params)
    assert torch.equal(a.assignments.class_index, b.assignments.class_index)
    assert torch.equal(a.assignments.psi_degrees, b.assignments.psi_degrees)
    assert torch.equal(a.classifier.class_averages(), b.classifier.class_averages())
    c = classify_batches(sub, _params(n_classes=4, online_em_iterations=3, batch_size_per_class=20, seed=5))
    assert not torch.equal(a.classifier.class_averages(), c.classifier.class_averages())


def test_particles_prepared_once_give_the_same_classification(
    data: SyntheticSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The driver keeps every prepared particle when they fit in its budget; without the budget
    # each mini-batch is read and prepared again. Both must classify identically.
    params = _params(n_classes=4, online_em_iterations=3, batch_size_per_class=20, force_max_over_poses=False)
    sub = data.batch.take(np.arange(120))
    kept = classify_batches(sub, params)
    monkeypatch.setattr(driver, "PREPARED_BUDGET_BYTES", 0)
    run = driver.BatchRun(sub, params)
    while not run.done:
        run.advance()
    again = run.result()
    assert run.prepared is None
    assert torch.equal(kept.assignments.class_index, again.assignments.class_index)
    assert torch.equal(kept.assignments.psi_degrees, again.assignments.psi_degrees)
    torch.testing.assert_close(kept.classifier.class_averages(), again.classifier.class_averages())


def test_a_run_prepares_its_particles_a_chunk_at_a_time(data: SyntheticSet) -> None:
    # Preparing is one piece of work per pass_chunk particles, so that an engine advancing a run
    # between its other work is not held up by preparing a large set at once; the result is the
    # one-piece preparation's.
    params = _params(n_classes=4, online_em_iterations=2, batch_size_per_class=20, force_max_over_poses=False)
    sub = data.batch.take(np.arange(120))
    run = driver.BatchRun(sub, params, pass_chunk=50)
    pieces = 0
    while run.stage == "prepare":
        assert run.advance() == 0
        pieces += 1
    assert pieces == 3 and run.prepare_start == 120
    assert run.prepared is not None
    whole = driver.prepare_all(sub, run.clf, 120)
    assert whole is not None
    assert torch.equal(run.prepared.samples, whole.samples) and torch.equal(run.prepared.ctf, whole.ctf)


def test_state_dict_round_trip_gives_identical_results(data: SyntheticSet, tmp_path: Path) -> None:
    params = _params(n_classes=4)
    first = data.batch.take(np.arange(0, 120))
    later = [data.batch.take(np.arange(s, s + 80)) for s in (120, 200)]
    clf = Classifier(params, BOX, PIXEL)
    clf.initialise(first)
    clf.step(first)
    path = tmp_path / "checkpoint.pt"
    torch.save(clf.state_dict(), path)
    restored = Classifier(params, BOX, PIXEL)
    restored.load_state_dict(torch.load(path, weights_only=True))
    for batch in later:
        x, y = clf.step(batch), restored.step(batch)
        assert torch.equal(x.class_index, y.class_index)
        assert torch.equal(x.psi_degrees, y.psi_degrees)
        assert torch.equal(x.pmax, y.pmax)
    assert torch.equal(clf.class_averages(), restored.class_averages())
    with pytest.raises(ValueError, match="other classification parameters"):
        Classifier(_params(n_classes=5), BOX, PIXEL).load_state_dict(clf.state_dict())


def _twins(data: SyntheticSet, **kw: object) -> tuple[Classifier, TensorBatch]:
    clf = Classifier(_params(n_classes=4, **kw), BOX, PIXEL)
    batch = TensorBatch.from_particles(data.batch.take(np.arange(160)))
    clf.initialise(batch)
    return clf, batch


def test_marginalisation_spreads_the_posteriors(data: SyntheticSet) -> None:
    fm, batch = _twins(data, force_max_over_poses=True)
    mg, _ = _twins(data, force_max_over_poses=False)
    assert torch.equal(fm.class_averages(), mg.class_averages())  # same start
    a, b = fm.assign(batch), mg.assign(batch)
    assert float(b.pmax.mean()) < float(a.pmax.mean())
    assert float(b.class_ess.mean()) > float(a.class_ess.mean())
    assert float(b.n_significant.float().mean()) > float(a.n_significant.float().mean())
    assert mg.force_max is False and Class2DParams(n_classes=20).force_max is False
    assert Class2DParams(n_classes=21).force_max is True


def test_higher_icuf_flattens_early_posteriors(data: SyntheticSet) -> None:
    low, batch = _twins(data, initial_uncertainty_factor=1.0)
    high, _ = _twins(data, initial_uncertainty_factor=6.0)
    assert high.temperature() == 6.0 and low.temperature() == 1.0
    a, b = low.assign(batch), high.assign(batch)
    assert float(b.class_ess.mean()) > float(a.class_ess.mean())
    assert float(b.pmax.mean()) < float(a.pmax.mean())


@pytest.mark.parametrize("force_max", [True, False])
def test_batches_of_every_size_share_one_gemm_workspace(data: SyntheticSet, force_max: bool) -> None:
    # A streaming engine folds batches of any size, so the last chunk of each batch has a new
    # width. The E-step's GEMM results must reuse one block (it once kept a block per width, and
    # the engine's memory grew with every new batch size), and reusing it must not change results.
    params = _params(n_classes=4, force_max_over_poses=force_max)
    clf = Classifier(params, BOX, PIXEL, chunk_size=16)
    twin = Classifier(params, BOX, PIXEL, chunk_size=16)
    first = data.batch.take(np.arange(120))
    clf.initialise(first)
    twin.initialise(first)
    clf.assign(data.batch.take(np.arange(16)))  # one full chunk: the widest block
    widest = clf._reference_bank().workspace.nbytes
    assert widest > 0
    for n in (3, 7, 11, 5, 13, 9, 37):
        clf.assign(data.batch.take(np.arange(200, 200 + n)))
        assert clf._reference_bank().workspace.nbytes == widest
    clf.step(data.batch.take(np.arange(120, 163)))  # new classes: a new bank over the same block
    twin.step(data.batch.take(np.arange(120, 163)))
    assert clf._reference_bank().workspace.nbytes == widest
    batch = data.batch.take(np.arange(250, 271))
    a, b = clf.assign(batch), twin.assign(batch)
    assert torch.equal(a.class_index, b.class_index)
    assert torch.equal(a.psi_degrees, b.psi_degrees)
    assert torch.equal(a.pmax, b.pmax)


def test_gemm_workspace_views_one_block() -> None:
    ws = GemmWorkspace()
    small = ws.view((2, 3, 4), torch.float32, torch.device("cpu"))
    assert small.shape == (2, 3, 4) and small.is_contiguous() and ws.nbytes == 24 * 4
    big = ws.view((2, 3, 10), torch.float32, torch.device("cpu"))
    assert ws.nbytes == 60 * 4
    again = ws.view((2, 3, 4), torch.float32, torch.device("cpu"))
    assert again.is_contiguous() and again.data_ptr() == big.data_ptr() and ws.nbytes == 60 * 4
    double = ws.view((2, 3, 4), torch.float64, torch.device("cpu"))
    assert double.dtype == torch.float64 and ws.nbytes == 24 * 8


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_runs_on_device(data: SyntheticSet, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    clf = Classifier(_params(n_classes=4), BOX, PIXEL, device=device)
    batch = data.batch.take(np.arange(100))
    clf.initialise(batch)
    got = clf.step(batch)
    assert clf.class_averages().device.type == device
    assert len(got) == 100 and got.class_index.device.type == "cpu"
    assert torch.isfinite(clf.class_averages()).all()


@pytest.mark.parametrize("force_max", [True, False])
def test_cuda_judges_as_the_cpu_does(data: SyntheticSet, force_max: bool) -> None:
    """The same state on the GPU gives the CPU's classes, posteriors and poses (fp32; TF32 is off in torch).

    Poses are compared after three steps, when the classes are sharp: under marginalisation the
    reported pose is the mode of the posterior, which a rounding difference can move to a sample
    of the same probability while the posterior is still flat; a wrong GPU path moves most of them.
    """
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    params = _params(n_classes=4, force_max_over_poses=force_max)
    batch = data.batch.take(np.arange(200))
    cpu = Classifier(params, BOX, PIXEL, device="cpu")
    cpu.initialise(batch)
    for _ in range(3):
        cpu.step(batch)
    gpu = Classifier(params, BOX, PIXEL, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    a, b = cpu.assign(batch), gpu.assign(batch)
    same_class = a.class_index == b.class_index
    # the same sample: angles and shifts equal up to the rounding of their conversion on each device
    psi_difference = torch.remainder(a.psi_degrees - b.psi_degrees + 180.0, 360.0) - 180.0
    same_pose = (
        same_class
        & (psi_difference.abs() < 1e-3)
        & ((a.origin_x_angstrom - b.origin_x_angstrom).abs() < 1e-3)
        & ((a.origin_y_angstrom - b.origin_y_angstrom).abs() < 1e-3)
    )
    share_class, share_pose = float(same_class.double().mean()), float(same_pose.double().mean())
    pmax_error = float((a.pmax - b.pmax).abs().max())
    print(f"force_max={force_max}: same class {share_class:.3f}, same pose {share_pose:.3f}, |dpmax| {pmax_error:.2e}")
    assert share_class >= 0.99
    assert share_pose >= 0.97
    assert pmax_error <= 2e-3
    stepped_cpu, stepped_gpu = cpu.step(batch), gpu.step(batch)
    assert float((stepped_cpu.class_index == stepped_gpu.class_index).double().mean()) >= 0.99
    averages_cpu, averages_gpu = cpu.class_averages(), gpu.class_averages().cpu()
    corr = torch.nn.functional.cosine_similarity(averages_cpu.flatten(1), averages_gpu.flatten(1), dim=1)
    assert float(corr.min()) >= 0.999
