"""What both programs of the framework use: config helpers, the ``sync`` and ``strategy``
schemas with the scheme builder, and the start-method guard for spawned processes.

The training program (``run.py``, ``experiments/*.py``) and the benchmark
(``python -m experiments.bench``) both import from here; nothing here imports either of them.
"""
