"""The service layer: the core put to work against the ports.

``store`` (the persistence port), ``batch`` (a batch of messages in, one transaction out),
``operations`` (starts and operator actions), ``deadlines`` (the alarm and its sweeps),
``relay`` (the outbox to the broker), ``dead_letters`` (the dead-letter drain and table),
``faults`` (what a failed commit means), ``supervisor`` (the long-running tasks, watched).
"""
