"""The pure core: what a workflow is and how a saga decides, with no I/O, no asyncio, no clock.

``messages`` (the wire's dataclasses), ``definitions`` and ``steps`` (the two ways to write a
workflow), ``machine`` (a workflow compiled onto ``transitions``), ``engine`` (``decide``: a saga
and a message in, a decision out), ``routing`` (which workflows and sagas a message is for),
``ingress`` (the rules for what comes in, REST and AMQP alike), ``journal`` and ``replay`` (the
journal's records, and rebuilding a saga from them), ``diagrams``. Nothing here imports from
``service``, ``adapters`` or ``entrypoints``.
"""
