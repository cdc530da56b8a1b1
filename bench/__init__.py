"""``python -m bench``: the orchestrator's benchmark, measured against the floor.

The floor (a ``pipeline.py`` that ``BENCH_FLOOR`` names; it is not part of this repository) is the
least a saga step can cost on RabbitMQ and PostgreSQL; the figures here only mean something as a
ratio against it, measured in the same run on the same machine. Without one the orchestrator's
scenarios still run, and the output says the floor is missing. See docs/benchmark.md for what
each figure is, how it is taken, and what a floor script must do.
"""
