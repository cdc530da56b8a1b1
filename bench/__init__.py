"""``python -m bench``: the orchestrator's benchmark, measured against the floor.

The floor (``../shared/limit/pipeline.py``) is the least a saga step can cost on RabbitMQ and
PostgreSQL; the figures here only mean something as a ratio against it, measured in the same run
on the same machine. See docs/benchmark.md for what each figure is and how it is taken.
"""
