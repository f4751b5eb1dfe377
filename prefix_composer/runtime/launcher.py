"""Composer's launcher that lets its ranks finish a preemption: ``python -m prefix_composer.runtime.launcher [composer args]``.

Composer 0.32.1's launcher (``composer``) answers SIGTERM with ``sys.exit(143)`` (the handler
``composer.core.engine`` installs on import), which its catch-all ``except`` turns into SIGTERM to
every rank, a wait of 30 s and SIGKILL; a second SIGTERM during that wait raises again, outside
the handler, so the launcher exits 143 at once and abandons the ranks (as PID 1 of a container
the kernel then SIGKILLs them, mid-save). Here SIGTERM does not stop the launcher: the first one
is forwarded to every rank, later ones are ignored (the ranks already have it), and the launcher
keeps monitoring as if nothing happened, so it exits when the ranks do, with their exit code (0
after ``preemption.GracefulPreemption`` saved the checkpoint). The pod's termination grace period
(runai/submit_train.sh: grace_seconds + 60 s) is the only limit. A SIGTERM before any rank was
started stops the launcher as Ctrl-C does. Everything else (a crashed rank, Ctrl-C) is Composer's.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import psutil


class ForwardFirstSigterm:
    """SIGTERM handler of the launcher: forward the first SIGTERM to the launcher's child processes
    (the ranks), ignore the rest; raise ``KeyboardInterrupt`` (Composer's Ctrl-C path) while no rank exists."""

    def __init__(self) -> None:
        self.forwarded_to: list[int] = []

    def __call__(self, signum: int, frame: Any) -> None:
        if self.forwarded_to:
            print(f'SIGTERM again: ignored, ranks {self.forwarded_to} are already stopping.', file=sys.stderr, flush=True)
            return
        ranks = [child.pid for child in psutil.Process().children()]
        if not ranks:
            raise KeyboardInterrupt
        for pid in ranks:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.forwarded_to = ranks
        print(f'SIGTERM: forwarded to ranks {ranks}; waiting for them to checkpoint and exit.', file=sys.stderr, flush=True)


def main() -> int:
    """Run ``composer.cli.launcher.main`` (same arguments as ``composer``) with ``ForwardFirstSigterm``."""
    from composer.cli import launcher

    signal.signal(signal.SIGTERM, ForwardFirstSigterm())
    return launcher.main()


if __name__ == '__main__':
    sys.exit(main())
