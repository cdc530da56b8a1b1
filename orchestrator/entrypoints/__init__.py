"""The ways in: the command line (``cli``), the running service (``runtime``: consume, decide,
commit, ack, relay; with the deadline alarm and the REST API in one event loop), the REST API
(``api``, served by ``server``), its wiring (``bootstrap``) and configuration (``settings``)."""
