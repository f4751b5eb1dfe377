"""``python tests/train_killed_mid_save.py BATCH yamls/... [key=value ...]``: train.py that SIGKILLs
itself after the checkpoint of batch BATCH is written and fsynced under its temporary name, before
the rename that publishes it (a test double around ``checkpoints.fsync_path``; production code
has no hook)."""

import os
import signal
import sys

from prefix_composer.runtime import checkpoints
from prefix_composer.runtime.launch import main


def kill_after_partial_write(batch: int):
    fsync = checkpoints.fsync_path

    def fsync_then_kill(path: str) -> None:
        fsync(path)
        if os.path.basename(path) == f'{checkpoints.PARTIAL_PREFIX}ep0-ba{batch}-rank0.pt':
            os.kill(os.getpid(), signal.SIGKILL)

    return fsync_then_kill


if __name__ == '__main__':
    checkpoints.fsync_path = kill_after_partial_write(int(sys.argv[1]))
    main(sys.argv[2:])
