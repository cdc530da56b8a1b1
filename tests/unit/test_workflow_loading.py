"""``--workflows`` names a module to import: one that cannot be imported says where it is looked for."""

from __future__ import annotations

import pytest

from orchestrator.entrypoints.bootstrap import load_workflows


def test_a_missing_workflow_module_says_it_must_be_importable() -> None:
    with pytest.raises(BaseException, match=r"no workflow module 'no_such_company\.workflows'") as raised:
        load_workflows("no_such_company.workflows")
    assert "PYTHONPATH" in str(raised.value) and "installed" in str(raised.value)


def test_a_module_that_imports_finds_its_sagas_and_workflows() -> None:
    assert [w.name for w in load_workflows("tests.unit.user_workflow")] == ["trip", "stay", "approved_trip"]
