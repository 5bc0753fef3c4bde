"""Pure tensor math of 2D classification: no I/O, device and dtype from the inputs.

Online expectation–maximisation over class × in-plane rotation × shift with RELION's CTF and a
coloured noise model, cryoSPARC's parameters (``otf2d.core.config.Class2DParams``) and schedule.

Modules
-------
``geometry``
    Internal box, masks, rotation and shift sampling, polar grid size (plain numbers).
``preprocess``
    Background normalisation, Fourier crop/pad, soft circular masks.
``ctf``
    RELION's CTF: torch-ctf on FFT grids, the direct formula at polar samples.
``polar``
    Polar Fourier samples of images and back, rotations and shifts there.
``batch``, ``prepare``
    Particles as tensors; normalised, cropped, masked polar samples and their CTF.
``fold``
    All in-plane rotations of circular correlations from a few real GEMMs (folded orders).
``estep``
    Scores of every (class, rotation, shift); force-max and marginalising posteriors with the
    ICUF temperature and class priors.
``scale``
    Per-particle scale ``α* = corr / (2·norm)``.
``mstep``
    Class-frame sufficient statistics, their online update, Wiener averages, SSNR.
``noise``
    Initial and updated noise power per ring.
``references``
    Statistics → class images (gridding, DC, re-centring, constraints) → E-step references.
``reseed``
    Near-empty classes replaced by splits of the largest.
``schedule``
    ICUF temperature law, online step size.
``constraints``
    Non-negativity, centre of mass, principal axis, upright rotation of filament classes.
``state``
    The classifier's state as tensors and plain numbers (checkpoints).
``classifier``
    ``Classifier``: the stateful driver (``initialise``, ``step``, ``assign``, ``maximise``,
    ``class_averages``, ``snapshot``, ``state_dict``/``load_state_dict``).
``assignments``
    ``Assignments``: every particle's class, psi, origin, posterior.
``driver``
    ``classify_batches``: cryoSPARC's offline schedule on any ``ParticleSource``.
``export``
    The state as a ``otf2d.core.snapshot.ClassSnapshot``.

Nothing is imported here, so ``import otf2d.engine.em`` costs nothing; import the modules.
"""
