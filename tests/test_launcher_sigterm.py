"""What docs/preemption.md says the launchers do with SIGTERM.

Composer 0.32.1's launcher gets its SIGTERM handler from importing ``composer`` and answers a
SIGTERM by forwarding it to the ranks and waiting ``CLEANUP_TIMEOUT`` (30 s) before SIGKILL, and
a second SIGTERM by exiting 143 at once; ours forwards the first SIGTERM, ignores the rest and
waits for the ranks. The cases are those ``scripts/launcher_sigterm.py`` measures (as PID 1 in a
user + PID namespace where that is allowed).
"""

from __future__ import annotations

import datetime
import signal
import sys
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'scripts'))

import launcher_sigterm  # noqa: E402


def test_importing_composer_installs_the_sigterm_handler_and_the_launcher_waits_30_s():
    import composer  # noqa: F401  (what the launcher imports first)
    from composer.cli import launcher
    from composer.core import engine

    assert signal.getsignal(signal.SIGTERM) is engine.sigterm_handler
    assert launcher.CLEANUP_TIMEOUT == datetime.timedelta(seconds=30)


@pytest.mark.parametrize('as_pid1', [False, True], ids=['process', 'pid1'])
def test_our_launcher_forwards_the_first_of_repeated_sigterms_and_returns_the_rank_exit_code(tmp_path, as_pid1):
    """Three SIGTERMs 0.5 s apart to the launcher while the rank's handler (a checkpoint) takes 3 s:
    the rank finishes and the launcher exits 0, also as PID 1 of a PID namespace (a container)."""
    if as_pid1 and launcher_sigterm.pid1_prefix() is None:
        pytest.skip('no PID namespace here (unshare missing or not allowed)')
    (tmp_path / 'rank.py').write_text(launcher_sigterm.RANK_SCRIPT)
    result = launcher_sigterm.run_case(launcher_sigterm.LAUNCHERS['prefix_composer.runtime.launcher'], as_pid1=as_pid1,
                                       delay=3.0, folder=str(tmp_path), sigterms=3)
    assert result['rank got SIGTERM'] and result['rank finished'], result
    assert result['exit'] == 0 and result['seconds'] >= 3.0, result
    [out] = tmp_path.glob('rank_*.txt')
    assert out.read_text().split().count('sigterm') == 1  # forwarded once


def test_composer_launcher_exits_143_at_a_second_sigterm(tmp_path):
    """What docs/preemption.md says plain ``composer`` does with two SIGTERMs: exit 143 without waiting for the rank."""
    (tmp_path / 'rank.py').write_text(launcher_sigterm.RANK_SCRIPT)
    result = launcher_sigterm.run_case(launcher_sigterm.LAUNCHERS['composer'], as_pid1=False, delay=30.0,
                                       folder=str(tmp_path), sigterms=2)
    assert result['rank got SIGTERM'] and not result['rank finished'], result
    assert result['exit'] == 143, result  # the rank (its handler: 30 s) is left running
    for orphan in psutil.process_iter(['cmdline']):
        if str(tmp_path / 'rank.py') in (orphan.info['cmdline'] or []):
            orphan.kill()


def test_composer_launcher_forwards_sigterm_to_the_rank_and_returns_its_exit_code(tmp_path):
    (tmp_path / 'rank.py').write_text(launcher_sigterm.RANK_SCRIPT)
    result = launcher_sigterm.run_case(launcher_sigterm.LAUNCHERS['composer'], as_pid1=False, delay=1.0,
                                       folder=str(tmp_path))
    assert result['rank got SIGTERM'] and result['rank finished'], result
    assert result['exit'] == 0, result
