"""A signal that stops one training run ends a command that runs several."""

from __future__ import annotations

import pytest

from fantasyworld.training.signals import exit_on_signal, signal_exit_code


@pytest.mark.parametrize(("stopped", "code"), [("sigterm", 143), ("sigint", 130)])
def test_a_run_stopped_by_a_signal_ends_the_command_with_the_shells_status(stopped, code, capsys):
    with pytest.raises(SystemExit) as info:
        exit_on_signal(stopped, "stage 1")
    assert info.value.code == code == signal_exit_code(stopped)
    assert "stage 1 stopped" in capsys.readouterr().out


@pytest.mark.parametrize("stopped", ["finished", "time_limit"])
def test_a_run_that_finished_or_ran_out_of_time_lets_the_command_go_on(stopped):
    assert exit_on_signal(stopped, "stage 1") is None
