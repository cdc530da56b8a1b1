"""Entry point of ``python -m participants``."""

from participants.cli import main

raise SystemExit(main())
