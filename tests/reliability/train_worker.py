"""`tuneops stage train`'s step in a process of its own, paused after one checkpoint.

Run by tests/reliability/test_faults.py, which kills it (SIGKILL) while it waits: a
training run killed mid-epoch, right after the checkpoint of step PAUSE_STEP was saved.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tuneops import quiet

quiet.apply()

from transformers import TrainerCallback  # noqa: E402

from tuneops import stages  # noqa: E402


class PauseAfterSave(TrainerCallback):
    def __init__(self, step: int, marker: Path) -> None:
        self.step, self.marker = step, marker

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            self.marker.write_text(str(state.global_step))
            time.sleep(600)  # killed here


if __name__ == "__main__":
    root, step, marker = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    stages.step_train(stages.load_context(root), callbacks=[PauseAfterSave(step, marker)])
