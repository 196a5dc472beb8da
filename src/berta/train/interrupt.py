"""Ctrl-C (SIGINT) and SIGTERM during training: finish the current step, save a checkpoint, stop.

The first signal only raises a flag that the loop reads after each optimizer step (under torchrun every rank
reads every rank's flag, so one rank's signal stops them all at the same step, with one checkpoint). A second
Ctrl-C stops at once, without saving. `TrainingInterruptedError` then tells the job and the CLI how it ended: the CLI
prints one line and exits 130 (SIGINT) or 143 (SIGTERM), as a shell does for a process killed by the signal.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterruptedError(KeyboardInterrupt):
    """Training stopped on a signal after saving the checkpoint of `step`. A KeyboardInterrupt, so that code
    catching `Exception` lets it through, as it does Ctrl-C.

    Example:
        >>> str(TrainingInterruptedError(121, signal.SIGINT))
        'interrupted at step 121; saved; run the same command to resume'
    """

    def __init__(self, step: int, signal_number: int):
        super().__init__(f"interrupted at step {step}; saved; run the same command to resume")
        self.step = step
        self.signal_number = signal_number

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number


class InterruptFlag:
    """A context manager that turns SIGINT / SIGTERM into a flag for its duration, then restores the handlers.

    Outside the main thread (where Python cannot install handlers) it never rises.

    Example:
        >>> with InterruptFlag() as interrupt:
        ...     interrupt.signal_number is None
        True
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}
        # Under torchrun the agent follows a Ctrl-C with SIGTERM to every worker: that is not a second request.
        self._escalates = int(os.environ.get("WORLD_SIZE", "1")) == 1

    def __enter__(self) -> InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            for number in _SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.signal_number is not None:
            if self._escalates and number == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signal_number = number
        log.info("%s: finishing the current step and saving a checkpoint (Ctrl-C again to stop without saving)",
                    signal.Signals(number).name)
