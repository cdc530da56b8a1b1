"""Workflow modules for the release tests: the bundled order saga beside a changed release 2."""
