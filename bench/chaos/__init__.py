"""``python -m bench.chaos``: sagas run through orchestrator replicas while faults are injected.

Three ``orchestrator run`` processes share a fresh database and namespace on a RabbitMQ node of
the suite's own; a seeded fault loop kills replicas, restarts the broker, ends database sessions
and stops participants; then a checker reads the journal and a tap on the wire and says whether
anything was lost, decided twice or left undone. See docs/chaos.md.

Modules: ``scenario`` (what runs and the fault schedule), ``faults`` (doing a fault),
``system`` (the processes the faults hit), ``wire`` (the start publisher and the tap),
``runner`` (one run, setup to teardown), ``checker`` (the assertions, pure), ``report`` (table
and JSON), ``workflow`` (the saga the replicas run).
"""
