"""A junk score per particle: junk hiding inside a good class (issue 14, item 6).

A class's junk score judges the class as a whole; a good class still holds particles it explains
badly (noise, decoys, carbon edges pulled in by the soft assignment). Under otf2d's Gaussian noise
model, a particle's log-likelihood under its best (class, pose) is ``−‖X − C·A‖² / 2σ²`` up to a
constant: a real member of the class loses only its noise, a pure-noise image also loses the whole
class signal, an ice or carbon image its own excess power. So within one class, a particle whose
log-likelihood lies far below its fellow members' is one the class does not explain.

The score: ``z = (ℓ − median_k ℓ) / (1.4826 · MAD_k ℓ)`` over the members of the particle's class
``k`` (robust: the median and the median absolute deviation ignore the junk tail), then
``junk = 1 / (1 + exp((z − Z_CENTRE) / Z_WIDTH))``: 0.5 at ``z = Z_CENTRE`` (−2.5 robust standard
deviations below the class's typical member), near 0 for typical members, near 1 far below. A class
with fewer than :data:`MIN_MEMBERS` members, or without spread, gives its members 0 (nothing to
compare with: the class score decides). It uses only what every snapshot has (``rlnClassNumber``,
``rlnLogLikeliContribution``), so a snapshot read back from disk scores the same.

Written as ``rlnOtf2dJunkScore`` (``_data.star``) and ``otf2d/junk_score`` (particles ``.cs``); used
by ``otf2d select --auto``, which drops the particles of kept classes whose score is above
``--particle-junk-threshold`` (default :data:`DEFAULT_PARTICLE_THRESHOLD`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from otf2d.core.snapshot import ClassSnapshot

FloatArray = npt.NDArray[np.float64]

#: Robust z at which the score is 0.5.
Z_CENTRE = -2.5
#: Width of the logistic step, in robust standard deviations.
Z_WIDTH = 0.5
#: Fewest members a class needs for its particles to be scored.
MIN_MEMBERS = 10
#: ``select --auto`` drops particles of kept classes scoring above this.
DEFAULT_PARTICLE_THRESHOLD = 0.5
#: RELION label and cryoSPARC field of the score.
RELION_LABEL = "rlnOtf2dJunkScore"
CS_FIELD = "otf2d/junk_score"


def robust_z(log_likelihood: npt.ArrayLike, class_index: npt.ArrayLike) -> FloatArray:
    """Each particle's log-likelihood in robust standard deviations from its class's median (0 where
    the class is too small or has no spread)."""
    ll = np.asarray(log_likelihood, dtype=np.float64)
    classes = np.asarray(class_index, dtype=np.int64)
    z = np.zeros(len(ll))
    for k in np.unique(classes):
        members = np.flatnonzero(classes == k)
        if len(members) < MIN_MEMBERS:
            continue
        values = ll[members]
        centre = float(np.median(values))
        spread = 1.4826 * float(np.median(np.abs(values - centre)))
        if spread > 0 and np.isfinite(spread):
            z[members] = (values - centre) / spread
    return z


def particle_junk_scores(snapshot: ClassSnapshot) -> FloatArray:
    """``(n,)`` junk score in [0, 1] of every particle of ``snapshot`` (see the module docstring)."""
    parts = snapshot.particles
    z = robust_z(parts.log_likelihood, parts.class_index)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp((z - Z_CENTRE) / Z_WIDTH))


__all__ = [
    "CS_FIELD",
    "DEFAULT_PARTICLE_THRESHOLD",
    "MIN_MEMBERS",
    "RELION_LABEL",
    "Z_CENTRE",
    "Z_WIDTH",
    "particle_junk_scores",
    "robust_z",
]
