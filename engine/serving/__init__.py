"""The engine as a service: ROUTER server, sessions, worker, folding, snapshot writer, metrics,
monitoring hooks, the ``otf2d engine`` command.
"""
