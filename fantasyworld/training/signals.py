"""How a training run stops on a signal: SIGTERM or SIGINT asks it to finish its step and
checkpoint; the command then exits with the shell's code for that signal."""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["STOP_SIGNALS", "SignalFlag", "signal_exit_code"]


#: the signals that stop a run cleanly, and the name a stopped run reports (``TrainResult.stopped``)
STOP_SIGNALS = {signal.SIGTERM: "sigterm", signal.SIGINT: "sigint"}


def signal_exit_code(stopped: str) -> int:
    """The shell's exit status for a run stopped by a signal: ``128 + signal number`` (143 for
    SIGTERM, 130 for SIGINT), 0 for ``finished``."""
    for signum, name in STOP_SIGNALS.items():
        if stopped == name:
            return 128 + int(signum)
    return 0


def exit_on_signal(stopped: str, what: str) -> None:
    """End the whole command when a signal stopped one of its runs (``stopped`` of a
    :class:`~fantasyworld.training.trainer.TrainResult`): ``SystemExit`` with the shell's status
    (:func:`signal_exit_code`) and a message naming ``what`` stopped, so a script that runs
    several trainings does not go on with the next after SIGTERM / SIGINT. Other stops
    (``finished``, ``time_limit``) return."""
    code = signal_exit_code(stopped)
    if code:
        print(f"{stopped.upper()}: {what} stopped; exiting (status {code})", flush=True)
        raise SystemExit(code)


class SignalFlag:
    """Set by SIGTERM or SIGINT (installed only in the main thread); restored on :meth:`close`.

    The first signal asks the run to finish its step and checkpoint; a second SIGINT (Ctrl-C
    twice) raises :class:`KeyboardInterrupt` at once (the newest complete checkpoint stays)."""

    def __init__(self) -> None:
        self.raised: str | None = None
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._old[signum] = signal.signal(signum, self._handler)

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.raised = self.raised or STOP_SIGNALS[signal.Signals(signum)]

    def close(self) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old = {}
