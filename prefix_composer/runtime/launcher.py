"""Composer's launcher with SIGTERM handled like Ctrl-C: ``python -m prefix_composer.runtime.launcher [composer args]``.

Composer's launcher installs no SIGTERM handler: as PID 1 it would ignore SIGTERM, otherwise it
dies and orphans its ranks. Here SIGTERM raises ``KeyboardInterrupt`` in the launcher, which it
answers by sending SIGTERM to every rank and waiting (up to its fixed 30 s) for them; the exit
code is theirs. The ranks' own handling (checkpoint, exit 0) is ``preemption.GracefulPreemption``.
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    """Run ``composer.cli.launcher.main`` (same arguments as ``composer``) with SIGTERM as Ctrl-C."""
    from composer.cli import launcher
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return launcher.main()


if __name__ == '__main__':
    sys.exit(main())
