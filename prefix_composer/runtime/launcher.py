"""Composer's launcher with SIGTERM handled like Ctrl-C: ``python -m prefix_composer.runtime.launcher [composer args]``.

Composer's launcher gets a SIGTERM handler when it imports ``composer`` (``composer.core.engine``:
``sys.exit(143)``); its catch-all ``except`` answers it by sending SIGTERM to the ranks, waiting
``CLEANUP_TIMEOUT`` (30 s) and SIGKILLing those still running, which cuts off a checkpoint that
takes longer (docs/preemption.md: measured, as PID 1 and not). Here SIGTERM raises
``KeyboardInterrupt``, answered the same way (SIGTERM to every rank, the exit code is theirs), but
with the wait set to ``PREEMPTION_WAIT``: the pod's termination grace period
(runai/submit_train.sh: grace_seconds + 60 s) is the limit that counts. After a rank crashed (no
SIGTERM) the wait stays 30 s. The ranks' own handling (checkpoint, exit 0) is
``preemption.GracefulPreemption``.
"""

from __future__ import annotations

import datetime
import signal
import sys
from typing import Any

PREEMPTION_WAIT = datetime.timedelta(hours=1)


def main() -> int:
    """Run ``composer.cli.launcher.main`` (same arguments as ``composer``) with SIGTERM as Ctrl-C."""
    from composer.cli import launcher

    def on_sigterm(signum: int, frame: Any) -> None:
        launcher.CLEANUP_TIMEOUT = PREEMPTION_WAIT
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    return launcher.main()


if __name__ == '__main__':
    sys.exit(main())
