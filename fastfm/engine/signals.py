"""Stopping a run on request: SIGTERM or SIGINT sets a flag (:class:`StopSignal`) that the trainer
reads at its refreshes; it then writes ``last.pt`` and raises :class:`Interrupted`."""

from __future__ import annotations

import os
import signal
import threading


class Interrupted(Exception):
    """Training stopped on request (SIGTERM or SIGINT) after writing ``last.pt``; rerun to resume.

    ``exit_code``: 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), the shell's convention.
    """

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class StopSignal:
    """A stop request, set by SIGTERM or SIGINT (Ctrl-C) while installed.

    The handler only sets a flag, so a signal arriving in the middle of a checkpoint write or an
    all-reduce does no harm.  A second SIGINT is the user insisting: it raises KeyboardInterrupt at
    once (no checkpoint; a write in progress is abandoned whole, the previous file kept).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def set(self, signum: int = signal.SIGTERM, _frame=None) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
        if signum == signal.SIGINT and int(os.environ.get("RANK", "0")) == 0:
            # os.write, not print: a handler may run in the middle of another write to stderr.
            os.write(2, b"\nCtrl-C: stopping at the next refresh and writing last.pt "
                        b"(press Ctrl-C again to quit at once, without saving)\n")

    def is_set(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self.set)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
