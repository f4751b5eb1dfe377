"""Start-up guards on the folders a run writes (standard library only; ``launch.preflight`` runs them).

* ``check_writable(key, folder)``: creates ``folder``, writes, fsyncs and removes a probe file, so an
  unwritable ``save_folder`` (or logger/records folder) fails at start-up, not at the first save.
* ``lock_run_folder(folder)``: an exclusive ``flock`` on ``<folder>/run.lock``, held until the returned
  file is closed or the process ends (the OS releases it however the process dies, so a preempted
  run never leaves a stale lock). The lock file names its holder (host, pid, start time); a second
  run on the same folder stops with that name. See docs/preemption.md for network filesystems.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from typing import TextIO

LOCK_NAME = 'run.lock'


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock."""


def check_writable(key: str, folder: str) -> None:
    """Create ``folder`` and write, fsync and remove a probe file in it; on failure raise ``OSError``
    naming the config ``key``, the folder and the OS error."""
    probe = os.path.join(folder, f'.write-probe-{os.getpid()}')
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, 'wb') as f:
            f.write(b'probe')
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        raise OSError(f'{key}: cannot write to {folder} ({type(e).__name__}: {e}). '
                      f'Set {key} to a writable folder (on Run:ai, one on the mounted volume).') from e


def lock_run_folder(folder: str) -> TextIO:
    """Take the exclusive lock of ``folder`` (``<folder>/run.lock``) and write the holder into it.

    Returns the open lock file: the lock lasts until it is closed or the process ends. Raises
    ``RunFolderBusy`` naming the holder when another process holds it.
    """
    path = os.path.join(folder, LOCK_NAME)
    lock = open(path, 'a+')
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or 'holder not written yet'
        lock.close()
        raise RunFolderBusy(
            f'{folder} is in use by another live run ({holder}); two runs on one folder overwrite each other\'s '
            f'checkpoints. Stop that run, or give this one its own folder with run_name=<new name>.',
        ) from None
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    lock.seek(0)
    lock.truncate()
    lock.write(f'host {socket.gethostname()}, pid {os.getpid()}, started {started}\n')
    lock.flush()
    os.fsync(lock.fileno())
    return lock
