"""Start-up removal of the shared memory that killed StreamingDatasets left in ``/dev/shm``.

A StreamingDataset registers its state as ``/dev/shm/<prefix:06>_<name>`` (``name`` one of
Streaming's ``SHM_TO_CLEAN``; ``streaming.base.shared.prefix._get_path``) and unlinks it on a clean
exit; a killed run leaves it behind, so every preemption leaks memory and the next run takes a
higher prefix. Streaming's own ``clean_stale_shared_memory`` unlinks every such entry, including
those of a live dataset of another run on the same node (this machine's tests, two jobs sharing a
host's ``/dev/shm``). Here an entry counts as stale when no process that this one can inspect maps it
(``/proc/<pid>/maps``): a live StreamingDataset keeps all its entries mapped for its lifetime.
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


def mapped_shm_names() -> set[str]:
    """Names of the ``/dev/shm`` files mapped by any process whose ``/proc/<pid>/maps`` is readable."""
    names = set()
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/maps') as maps:
                for line in maps:
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6 and fields[5].startswith(SHM_DIR + '/'):
                        names.add(fields[5].rstrip('\n').removesuffix(' (deleted)')[len(SHM_DIR) + 1:])
        except OSError:  # the process ended, or is another user's
            continue
    return names


def clean_stale_streaming_shm() -> list[str]:
    """Unlink this user's Streaming entries in ``/dev/shm`` that no live process maps; returns their names."""
    if not os.path.isdir(SHM_DIR):
        return []
    uid = os.getuid()
    candidates = set()
    for name in os.listdir(SHM_DIR):
        try:
            if STREAMING_SHM.match(name) and os.stat(os.path.join(SHM_DIR, name)).st_uid == uid:
                candidates.add(name)
        except FileNotFoundError:
            continue
    removed = []
    for name in sorted(candidates - mapped_shm_names()):
        try:
            os.remove(os.path.join(SHM_DIR, name))
        except FileNotFoundError:  # its owner exited cleanly meanwhile
            continue
        removed.append(name)
    if removed:
        log.warning('Removed %d shared-memory entries that killed StreamingDatasets left in %s: %s.',
                    len(removed), SHM_DIR, ', '.join(removed))
    return removed
