"""Start-up guards on the folders a run writes (standard library only; ``launch.preflight`` runs them).

* ``check_writable(key, folder)``: creates ``folder``, writes, fsyncs and removes a probe file, so an
  unwritable ``save_folder`` (or logger/records folder) fails at start-up, not at the first save.
* ``mount_of(path)``: the mount point and device holding ``path``, for "free N MB on <device>" advice.
* ``lock_run_folder(folder)``: an exclusive ``flock`` on ``<folder>/run.lock``, held until the returned
  file is closed or the process ends (the OS releases it however the process dies, so a preempted
  run never leaves a stale lock). The lock file names its holder (host, pid, start time); a second
  run on the same folder stops with that name. See docs/preemption.md for network filesystems.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import re
import socket
from typing import TextIO

LOCK_NAME = 'run.lock'


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock."""


def mount_of(path: str) -> tuple[str, str]:
    """(mount point, device) of the filesystem holding ``path`` (the longest mount point above its real
    path in ``/proc/self/mounts``; ``('/', 'unknown device')`` where that cannot be read)."""
    real = os.path.realpath(path)
    best = ('/', 'unknown device')
    try:
        with open('/proc/self/mounts') as mounts:
            entries = [line.split()[:2] for line in mounts]
    except OSError:
        return best
    for device, point in entries:
        point = re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), point)  # the kernel writes a space as \040
        if (real == point or real.startswith(point.rstrip('/') + '/')) and len(point) >= len(best[0]):
            best = (point, device)
    return best


def no_space_advice(folder: str) -> str:
    """"N MB free on <device> (mounted at <mount point>)": the filesystem of ``folder`` and its free space now."""
    mount, device = mount_of(folder)
    st = os.statvfs(folder)
    return f'{st.f_bavail * st.f_frsize / 1e6:.1f} MB free on {device} (mounted at {mount})'


def unwritable(key: str, folder: str, error: OSError) -> OSError:
    """The error for a failed write to ``folder`` (config ``key``): a full disk names the device and its free space."""
    if error.errno == errno.ENOSPC:
        return OSError(errno.ENOSPC, f'{key}: cannot write to {folder}: no space left (ENOSPC), '
                                     f'{no_space_advice(folder)}. Free space there and restart.')
    return OSError(f'{key}: cannot write to {folder} ({type(error).__name__}: {error}). '
                   f'Set {key} to a writable folder (on Run:ai, one on the mounted volume).')


def check_writable(key: str, folder: str) -> None:
    """Create ``folder`` and write, fsync and remove a probe file in it; on failure raise ``unwritable``'s
    ``OSError`` naming the config ``key``, the folder and the OS error."""
    probe = os.path.join(folder, f'.write-probe-{os.getpid()}')
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, 'wb') as f:
            f.write(b'probe')
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        if os.path.exists(probe):
            os.remove(probe)
        raise unwritable(key, folder, e) from e


def lock_run_folder(folder: str) -> TextIO:
    """Take the exclusive lock of ``folder`` (``<folder>/run.lock``, both created if missing) and write the holder into it.

    Returns the open lock file: the lock lasts until it is closed or the process ends. Raises
    ``RunFolderBusy`` naming the holder when another process holds it.
    """
    path = os.path.join(folder, LOCK_NAME)
    try:
        os.makedirs(folder, exist_ok=True)
        lock = open(path, 'a+')
    except OSError as e:
        raise unwritable('save_folder', folder, e) from e
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
