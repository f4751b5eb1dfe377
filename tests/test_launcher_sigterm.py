"""What docs/preemption.md says Composer's launcher does with SIGTERM.

Composer 0.32.1's launcher gets its SIGTERM handler from importing ``composer`` and answers a
SIGTERM by forwarding it to the ranks and waiting ``CLEANUP_TIMEOUT`` (30 s) before SIGKILL; our
launcher keeps the forwarding and lengthens the wait. The subprocess case is the one
``scripts/launcher_sigterm.py`` measures (not as PID 1: that needs root and a PID namespace).
"""

from __future__ import annotations

import datetime
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'scripts'))

import launcher_sigterm  # noqa: E402


def test_importing_composer_installs_the_sigterm_handler_and_the_launcher_waits_30_s():
    import composer  # noqa: F401  (what the launcher imports first)
    from composer.cli import launcher
    from composer.core import engine

    assert signal.getsignal(signal.SIGTERM) is engine.sigterm_handler
    assert launcher.CLEANUP_TIMEOUT == datetime.timedelta(seconds=30)


def test_our_launcher_waits_longer_after_sigterm(monkeypatch):
    from composer.cli import launcher

    from prefix_composer.runtime import launcher as ours

    handlers = {}
    monkeypatch.setattr(signal, 'signal', lambda signum, handler: handlers.setdefault(signum, handler))
    monkeypatch.setattr(launcher, 'CLEANUP_TIMEOUT', launcher.CLEANUP_TIMEOUT)
    monkeypatch.setattr(launcher, 'main', lambda: handlers[signal.SIGTERM](signal.SIGTERM, None))
    try:
        ours.main()
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError('SIGTERM did not raise KeyboardInterrupt in the launcher')
    assert launcher.CLEANUP_TIMEOUT == ours.PREEMPTION_WAIT > datetime.timedelta(seconds=30)


def test_composer_launcher_forwards_sigterm_to_the_rank_and_returns_its_exit_code(tmp_path):
    (tmp_path / 'rank.py').write_text(launcher_sigterm.RANK_SCRIPT)
    result = launcher_sigterm.run_case(launcher_sigterm.LAUNCHERS['composer'], as_pid1=False, delay=1.0,
                                       folder=str(tmp_path))
    assert result['rank got SIGTERM'] and result['rank finished'], result
    assert result['exit'] == 0, result
