"""After 2D classification: select particles by class, rebalance views, export picking templates (no torch).

Modules:

- a snapshot on disk is found and read back by ``otf2d.monitoring.snapshots.reader``, beside its writer;
- ``live``: ask a running engine for a snapshot of a session now and wait until it is on disk;
- ``choose``: which classes to keep (class numbers, or the junk scores of ``otf2d.monitoring.quality``),
  filtered by particles and resolution;
- ``write``: the chosen particles as a RELION ``particles.star`` and a cryoSPARC ``.cs``;
- ``rebalance``: classes grouped into views (``otf2d.monitoring.views``), particles dropped at random
  from over-represented views; ``view_plot`` draws the view distribution before and after;
- ``templates``: class averages re-centred and low-passed, as an MRC stack for template pickers;
- ``source`` and the ``*_cmd`` modules: the ``otf2d select``, ``rebalance`` and ``templates`` commands.
"""
