"""Where every step reads and writes, relative to one project root."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """The project layout of DESIGN.md, rooted at `root`."""

    root: Path

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def data_raw(self) -> Path:
        return self.root / "data" / "raw"

    def raw_dataset(self, name: str) -> Path:
        return self.data_raw / name

    @property
    def data_lock(self) -> Path:
        """Held while data/raw changes (ingest, dvc add): beside data/raw, not inside it."""
        return self.root / "data" / "raw.lock"

    @property
    def data_prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def data_cache(self) -> Path:
        """HF `datasets` cache for tokenised splits (keyed by fingerprint, safe to delete)."""
        return self.root / "data" / "cache"

    @property
    def candidate(self) -> Path:
        return self.root / "models" / "candidate"

    @property
    def checkpoints(self) -> Path:
        return self.root / "models" / "checkpoints"

    @property
    def export(self) -> Path:
        return self.root / "models" / "export"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; on success it replaces `target` whole.

    On an exception (while writing, or in either rename) the temporary folder is removed
    and `target` is left as it was, so a crash never leaves half-written outputs where the
    next step would read them. A kill (SIGKILL) between the two renames, a window of
    microseconds, leaves the previous folder beside it as `.<name>.old-<pid>-<id>`.
    Temporary names carry the pid and a random id: containers on a shared volume often
    share pids (pid 1), and a name they shared would be removed by the other writer.
    """
    tmp = target.with_name(f".{target.name}.tmp-{_unique()}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(tmp: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{_unique()}")
    if target.exists():
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old.exists():
            os.rename(old, target)  # the previous outputs, back where they were
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target` to write; on success it replaces `target`.

    On an exception `target` keeps its previous content and the temporary file is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    # The suffix stays last: writers such as savefig pick the format from it.
    tmp = target.with_name(f".{target.stem}.tmp-{_unique()}{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(target: Path, text: str) -> None:
    """Write `text` to `target` through a temporary file and an atomic rename."""
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _unique() -> str:
    """`<pid>-<random hex>`: unique across processes, hosts and containers."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
