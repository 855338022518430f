"""One run at a time per project: a file lock held for a whole flow run, a `tuneops
stage`, and an ingest.

Every step reads and writes fixed paths under the project root (models/candidate,
reports/, data/prepared, models/export), so two runs in one project would score, log and
register each other's outputs. The lock is an OS file lock (filelock: fcntl/flock), which
the kernel releases when its process dies, so a killed run leaves no stale lock. Beside
it, `.tuneops.lock.holder.json` says who holds it (pid, host, start time, command): a
second run fails at once with ProjectBusy naming that holder. Within one process the
lock is re-entrant (the retrain flow runs the training flow as a subflow).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from tuneops.errors import ProjectBusy
from tuneops.paths import atomic_write_text

LOCK_NAME = ".tuneops.lock"
HOLDER_NAME = ".tuneops.lock.holder.json"

_held: dict[Path, int] = {}  # lock path -> depth, for this process
_guard = threading.Lock()


@contextmanager
def project_lock(root: Path, command: str, timeout_s: float = 0) -> Iterator[None]:
    """Hold the project's run lock while the block runs; ProjectBusy (naming the holder)
    when another process holds it for longer than `timeout_s` (0: fail at once)."""
    path = root.resolve() / LOCK_NAME
    with _guard:
        depth = _held.get(path, 0)
        if depth:
            _held[path] = depth + 1
    if depth:
        try:
            yield
        finally:
            with _guard:
                _held[path] -= 1
        return
    lock = FileLock(path, timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise ProjectBusy(
            f"{root.resolve()}: another tuneops run holds the project lock: "
            f"{describe(holder(root))}; wait for it to finish (or stop it), then run again "
            f"(one flow run, stage or ingest at a time per project; lock file {path})"
        ) from None
    token = uuid.uuid4().hex
    record = {
        "command": command,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "token": token,
    }
    holder_file = path.with_name(HOLDER_NAME)
    try:
        atomic_write_text(holder_file, json.dumps(record) + "\n")
        with _guard:
            _held[path] = 1
        yield
    finally:
        with _guard:
            _held.pop(path, None)
        if (holder(root) or {}).get("token") == token:
            holder_file.unlink(missing_ok=True)
        lock.release()


def holder(root: Path) -> dict[str, Any] | None:
    """Who holds the project lock, as its holder wrote it (None: unknown)."""
    try:
        found = json.loads((root.resolve() / HOLDER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def describe(found: dict[str, Any] | None) -> str:
    if found is None:
        return "holder unknown (it is starting, or wrote no record)"
    return (
        f"{found.get('command', '?')!r} (pid {found.get('pid', '?')} on host "
        f"{found.get('host', '?')}, started {found.get('started', '?')})"
    )
