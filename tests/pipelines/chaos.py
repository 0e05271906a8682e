"""A worker failure on purpose, to watch Ray Train restart the workers from their last checkpoint.

Set ``ray.loader_hook=tests.pipelines.chaos:fail_stage1_at_step_4``: the training loader of the
last worker of stage 1 raises once at global step 4. Ray's workers import this module by name:
Ray puts the driver's working directory (the repository root, where pytest runs) on their path.
A marker file (:func:`marker`) makes it once, for all the workers and restarts of a drill on one
machine; the test removes it before and checks it after.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

HOOK = "tests.pipelines.chaos:fail_stage1_at_step_4"
FAIL_AT_STEP = 4


def marker(run_name: str, stage: str = "stage1") -> Path:
    return Path(tempfile.gettempdir()) / f"adapler-fail-once-{run_name}-{stage}"


class FailOnce:
    """``loader`` that raises once, when the global step (epochs counted from ``start_epoch``)
    reaches ``step``, unless ``marker`` exists (which it then writes)."""

    def __init__(self, loader, step: int, marker: Path, start_epoch: int):
        self.loader, self.step, self.marker = loader, step, marker
        self.batch_sampler = loader.batch_sampler  # the training loop sets its epoch
        self.seen = start_epoch * len(loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.seen == self.step and not self.marker.exists():
                self.marker.write_text("failed once")
                raise RuntimeError(f"injected worker failure at step {self.step}")
            self.seen += 1
            yield batch


def fail_stage1_at_step_4(loader, *, config, stage: str, rank: int, world_size: int, start_epoch: int):
    """The ``ray.loader_hook``: stage 1's last worker fails once at :data:`FAIL_AT_STEP`."""
    if stage != "stage1" or rank != world_size - 1:
        return loader
    return FailOnce(loader, FAIL_AT_STEP, marker(config.name, stage), start_epoch)
