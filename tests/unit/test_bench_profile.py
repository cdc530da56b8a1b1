"""The benchmark's profile (bench/profile.py): py-spy's collapsed stacks summed by stage."""

from __future__ import annotations

from pathlib import Path

from bench.profile import IMPORTS, OTHER, read, stage_of

# as py-spy writes frames: paths from the package's root
SAVE = "save (orchestrator/adapters/postgres/store.py:451)"
EXECUTE = "Connection._do_execute (asyncpg/connection.py:2001)"
BATCH = "process_batch (orchestrator/service/batch.py:300)"
DECIDE = "decide (orchestrator/core/engine.py:90)"
RUN = "Runner.run (asyncio/runners.py:118)"
LOG = "Logger.info (logging/__init__.py:1489)"


def test_a_sample_belongs_to_the_innermost_frame_a_stage_names() -> None:
    assert stage_of([RUN, BATCH, SAVE, EXECUTE]) == "database driver (asyncpg)"
    assert stage_of([RUN, BATCH, SAVE]) == "commit (the store's statements)"
    assert stage_of([RUN, BATCH, DECIDE]) == "decide (engine, machine)"
    assert stage_of([RUN, BATCH]) == "the batch's own work"
    assert stage_of([RUN]) == "event loop"
    assert stage_of([RUN, BATCH, LOG]) == "logging"
    assert stage_of(["<module> (<string>:1)"]) == OTHER


def test_a_sample_inside_an_import_is_start_up_whatever_module_it_runs() -> None:
    load = "exec_module (<frozen importlib._bootstrap_external>:940)"
    assert stage_of([RUN, load, "<module> (asyncpg/connection.py:1)"]) == IMPORTS
    main, import_module = "<module> (orchestrator/__main__.py:1)", "import_module (importlib/__init__.py:126)"
    assert stage_of([main, import_module]) == IMPORTS


def test_raw_files_are_summed_with_their_thread_and_process_frames_dropped(tmp_path: Path) -> None:
    one, two = tmp_path / "a.txt", tmp_path / "b.txt"
    one.write_text(f"process 1:python;thread (0x1);{RUN};{BATCH};{DECIDE} 3\n{RUN};{BATCH};{SAVE} 1\n")
    two.write_text(f"{RUN} 4\nnot a sample line\n")
    profile = read([one, two])
    assert profile.samples == 8
    assert profile.stages == {
        "decide (engine, machine)": 3,
        "commit (the store's statements)": 1,
        "event loop": 4,
    }
    assert profile.leaves["decide (orchestrator/core/engine.py)"] == 3
    figures = profile.as_json()
    assert figures["stages_pct"] == {
        "event loop": 50.0,
        "decide (engine, machine)": 37.5,
        "commit (the store's statements)": 12.5,
    }
