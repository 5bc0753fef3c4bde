"""Monitoring: class quality, views, the grid verdict, metrics, the status page (no torch: numpy snapshots).

Modules:

- ``snapshots``: writers of RELION Class2D output, cryoSPARC ``.cs`` and PNG galleries;
- ``quality``: per-class junk score from interpretable features, user overrides (``load_overrides``);
- ``views``: distinct views by rotation-invariant similarity, view and class-distribution entropy;
- ``verdict``: collect / marginal / abandon with a confidence and reasons, forecast to a target;
- ``state``: ``compute_state(snapshot, history, config)`` and ``SessionMonitor`` (latest state per session);
- ``metrics``: Prometheus collectors of the states (``register_monitoring``);
- ``status_page`` and ``http``: the read-only status page, ``/status.json``, PNGs and ``/metrics``.
"""
