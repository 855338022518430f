"""One run at a time per project: the project lock, held by another real process, stops a
flow run, `tuneops stage`, `retrain` and `ingest` with a message naming the holder; and
temporary output names are unique within one process too."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, tool_env
from tests.reliability.conftest import run_cli, tree_hash
from tuneops.errors import ProjectBusy
from tuneops.paths import atomic_dir
from tuneops.runlock import HOLDER_NAME, project_lock

HOLD = """
import sys, time
from pathlib import Path
from tuneops.runlock import project_lock
with project_lock(Path(sys.argv[1]), "tuneops stage train"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def held(project: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding `project`'s lock, as a running `tuneops stage train` would."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(project)],
        cwd=REPO,
        env=tool_env() | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    yield holder
    holder.kill()
    holder.wait(timeout=30)


def holder_line(holder: subprocess.Popen[str], project: Path) -> str:
    started = json.loads((project / HOLDER_NAME).read_text())["started"]
    return (
        f"tuneops: ProjectBusy: {project.resolve()}: another tuneops run holds the project "
        f"lock: 'tuneops stage train' (pid {holder.pid} on host {socket.gethostname()}, "
        f"started {started}); wait for it to finish (or stop it), then run again"
    )


@pytest.mark.audit("C3", "M8", "T5")
def test_a_second_command_fails_at_once_naming_the_holder_and_changes_nothing(
    project: Path,
    held: subprocess.Popen[str],
    prefect_server: None,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    expected = holder_line(held, project)
    batch = tmp_path / "batch.csv"
    batch.write_text("text,label\na fine film,positive\n")
    before = tree_hash(project)
    for argv in (["stage", "fetch-data"], ["ingest", str(batch)], ["run"], ["retrain"]):
        run = run_cli(capfd, "--root", str(project), *argv)
        assert run.exit_code == ProjectBusy.exit_code == 9, (argv, run.err[-3000:])
        assert run.error_line.startswith(expected), (argv, run.error_line)
        assert "Traceback" not in run.err + run.out
    assert tree_hash(project) == before  # nothing fetched, ingested or written
    assert not (project / "data").exists() and not (project / "models").exists()


@pytest.mark.audit("C3")
def test_the_lock_is_free_once_its_holder_is_killed(
    project: Path, held: subprocess.Popen[str], capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ProjectBusy, match=rf"pid {held.pid} on host "), project_lock(project, "x"):
        pass
    os.kill(held.pid, signal.SIGKILL)  # no cleanup runs: the kernel drops the file lock
    held.wait(timeout=30)
    run = run_cli(capfd, "--root", str(project), "stage", "fetch-data")
    assert run.exit_code == 0, run.err[-3000:]
    assert (project / "data" / "raw" / "movie_sentiment").is_dir()
    assert not (project / HOLDER_NAME).exists()  # released, and its record removed


@pytest.mark.audit("C3")
def test_the_lock_is_reentrant_in_one_process(project: Path) -> None:
    """The retrain flow runs the training flow as a subflow in its own process."""
    with project_lock(project, "retrain flow"):
        with project_lock(project, "training flow"):
            assert json.loads((project / HOLDER_NAME).read_text())["command"] == "retrain flow"
        assert (project / HOLDER_NAME).exists()
    assert not (project / HOLDER_NAME).exists()


@pytest.mark.audit("C3")
def test_two_writers_of_one_folder_in_one_process_get_their_own_temporary_folders(
    tmp_path: Path,
) -> None:
    """The names were `.NAME.tmp-<pid>`: a second writer with the same pid (a thread, or a
    container on a shared volume where both are pid 1) removed the first one's folder."""
    target = tmp_path / "export"
    with atomic_dir(target) as first:
        (first / "a.txt").write_text("first")
        with atomic_dir(target) as second:
            assert second != first
            assert (first / "a.txt").read_text() == "first"
            (second / "b.txt").write_text("second")
        assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
