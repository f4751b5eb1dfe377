"""Start-up removal of the shared memory that killed StreamingDatasets left in ``/dev/shm``.

A StreamingDataset registers its state as ``/dev/shm/<prefix:06>_<name>`` (``name`` one of
Streaming's ``SHM_TO_CLEAN``; ``streaming.base.shared.prefix._get_path``) and unlinks it on a clean
exit; a killed run leaves it behind, so every preemption leaks memory and the next run takes a
higher prefix. Streaming's own ``clean_stale_shared_memory`` unlinks every such entry, including
those of a live dataset of another run on the same node (this machine's tests, two jobs sharing a
host's ``/dev/shm``). Here an entry counts as stale when no process that this one can inspect maps it
(``/proc/<pid>/maps``, by device and inode): a live StreamingDataset keeps all its entries mapped for its lifetime.
Only entries owned by this user are considered (``/dev/shm`` is sticky: others' cannot be removed).

Registration: Streaming's ``get_shm_prefix`` lists ``/dev/shm``, picks the first free prefix, then
creates ``<prefix>_locals``; two runs of one machine that build datasets at the same moment can pick
the same prefix, and one fails (``FileExistsError: '/000NNN_locals'``). ``install_serialized_registration``
makes StreamingDataset call it under an exclusive ``flock`` on ``/dev/shm`` itself, held by the
local leader of a one-node job for the whole call (the entries of one ``/dev/shm``, one lock). Jobs
spanning nodes are left as Streaming has them: the call holds a barrier of all the job's ranks, and a
host lock held across it could deadlock two such jobs sharing two hosts' ``/dev/shm`` (on Run:ai each
pod has its own ``/dev/shm``, where no other job registers).
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import re
from typing import Callable

from streaming.base import dataset as streaming_dataset
from streaming.base.constant import SHM_TO_CLEAN
from streaming.base.shared import prefix as streaming_prefix

log = logging.getLogger(__name__)

SHM_DIR = '/dev/shm'
STREAMING_SHM = re.compile(r'^\d{6}_(%s)$' % '|'.join(map(re.escape, SHM_TO_CLEAN)))


def mapped_shm_files() -> set[tuple[int, int, int]]:
    """(device major, minor, inode) of the ``/dev/shm`` files mapped by any process whose
    ``/proc/<pid>/maps`` is readable.

    Files, not names: a mapping of an entry that was unlinked (``(deleted)``) does not keep a new
    entry of the same name alive, nor does a file of another ``/dev/shm`` (another pod's tmpfs).
    """
    files = set()
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/maps') as maps:
                for line in maps:
                    fields = line.split(maxsplit=5)  # address perms offset dev inode path
                    if len(fields) == 6 and fields[5].startswith(SHM_DIR + '/'):
                        major, minor = fields[3].split(':')
                        files.add((int(major, 16), int(minor, 16), int(fields[4])))
        except OSError:  # the process ended, or is another user's
            continue
    return files


def clean_stale_streaming_shm() -> list[str]:
    """Unlink this user's Streaming entries in ``/dev/shm`` that no live process maps; returns their names."""
    if not os.path.isdir(SHM_DIR):
        return []
    uid = os.getuid()
    candidates = {}
    for name in filter(STREAMING_SHM.match, os.listdir(SHM_DIR)):
        try:
            stat = os.stat(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            continue
        if stat.st_uid == uid:
            candidates[name] = (os.major(stat.st_dev), os.minor(stat.st_dev), stat.st_ino)
    live = mapped_shm_files() if candidates else set()
    removed = []
    for name in sorted(name for name, file in candidates.items() if file not in live):
        try:
            os.remove(os.path.join(SHM_DIR, name))
        except FileNotFoundError:  # its owner exited cleanly meanwhile
            continue
        removed.append(name)
    if removed:
        log.warning('Removed %d shared-memory entries that killed StreamingDatasets left in %s: %s.',
                    len(removed), SHM_DIR, ', '.join(removed))
    return removed


def serialized_registration(get_shm_prefix: Callable) -> Callable:
    """``get_shm_prefix`` with the local leader of a one-node job holding an exclusive ``flock`` on
    ``/dev/shm`` for the whole call (module docstring); other ranks, and jobs across nodes, call it as is."""
    @functools.wraps(get_shm_prefix)
    def registered(streams_local, streams_remote, world, *args, **kwargs):
        if not (world.is_local_leader and world.num_nodes == 1 and os.path.isdir(SHM_DIR)):
            return get_shm_prefix(streams_local, streams_remote, world, *args, **kwargs)
        fd = os.open(SHM_DIR, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return get_shm_prefix(streams_local, streams_remote, world, *args, **kwargs)
        finally:
            os.close(fd)  # releases the lock
    return registered


def install_serialized_registration() -> None:
    """Make StreamingDataset (which calls it as ``streaming.base.dataset.get_shm_prefix``) register
    under the lock; wraps Streaming's own function, so installing again changes nothing."""
    streaming_dataset.get_shm_prefix = serialized_registration(streaming_prefix.get_shm_prefix)
