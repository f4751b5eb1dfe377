"""Composer's launcher with SIGTERM handled like Ctrl-C: ``python -m prefix_composer.runtime.launcher [composer args]``.

Composer's launcher installs no SIGTERM handler: as PID 1 it would ignore SIGTERM, otherwise it
dies and orphans its ranks. Here SIGTERM raises ``KeyboardInterrupt`` in the launcher, which it
answers by sending SIGTERM to every rank and waiting for them; the exit code is theirs. Composer
SIGKILLs ranks still running after 30 s, which would cut off a checkpoint that takes longer, so
after SIGTERM the wait is ``PREEMPTION_WAIT``: the pod's termination grace period
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
