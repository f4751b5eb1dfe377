"""Start-up removal of the shared memory that killed StreamingDatasets left in ``/dev/shm``.

A StreamingDataset registers its state as ``/dev/shm/<prefix:06>_<name>`` (``name`` one of
Streaming's ``SHM_TO_CLEAN``; ``streaming.base.shared.prefix._get_path``) and unlinks it on a clean
exit; a killed run leaves it behind, so every preemption leaks memory and the next run takes a
higher prefix. Streaming's own ``clean_stale_shared_memory`` unlinks every such entry, including
those of a live dataset of another run on the same node (this machine's tests, two jobs sharing a
host's ``/dev/shm``). Here an entry counts as stale when no process that this one can inspect maps it
(``/proc/<pid>/maps``, by device and inode): a live StreamingDataset keeps all its entries mapped for its lifetime.
Only entries owned by this user are considered (``/dev/shm`` is sticky: others' cannot be removed).
"""

from __future__ import annotations

import logging
import os
import re

from streaming.base.constant import SHM_TO_CLEAN

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
