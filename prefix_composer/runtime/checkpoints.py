"""Crash-safe local checkpoints: atomic save, start-up selection of the newest loadable one, retention.

Composer's ``CheckpointSaver`` writes ``ep{epoch}-ba{batch}-rank0.pt`` straight to its final name
and replaces ``latest-rank0.pt`` by remove-then-create. A kill inside either window leaves a
truncated checkpoint (Composer's conflict check then refuses every restart) or no ``latest``
(autoresume silently starts again from batch 0). Here:

* ``AtomicCheckpointSaver`` writes ``partial-<name>``, fsyncs it, renames it to ``<name>``, then swaps
  ``latest-rank0.pt`` atomically (new symlink ``partial-latest-rank0.pt``, ``os.replace``), and only
  then deletes old checkpoints: the folder-wide newest ``save_num_checkpoints_to_keep`` are kept,
  including those of earlier (preempted) processes, which Composer's own rotation forgets.
* A save that fails (a full disk: torch says only "file write failed") deletes its ``partial-*`` file
  and raises ``OSError`` naming the file, ENOSPC where the disk is full, the device and its free
  space; the checkpoints already saved and ``latest-rank0.pt`` are untouched.
* ``check_checkpoint_space(folder)`` (pre-flight, after ``remove_partial_files``): the filesystem must
  have room for one more checkpoint of the size of the newest one, else ``OSError`` saying how many
  MB to free on which device, before a run that could only fail at its first save starts.
* ``prepare_autoresume(cfg)`` (pre-flight, before the Trainer exists) deletes stale ``partial-*``
  files, checks the checkpoints newest-first (zip CRC of every entry: ``torch.save`` files are zip
  archives, so a truncated or damaged file fails), renames broken ones to ``<name>.corrupt`` with a
  warning, and points ``latest-rank0.pt`` at the newest good one. If checkpoints exist and none is
  good it raises instead of letting the run restart from batch 0.

Only the default llm-foundry names and a local, unsharded (monolithic, rank-0-only) save folder
are handled; other set-ups keep Composer's behaviour.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import zipfile
from typing import Optional

from composer.callbacks import CheckpointSaver
from composer.core import State
from composer.loggers import Logger, RemoteUploaderDownloader
from composer.utils import checkpoint, format_name_with_dist, parse_uri
from omegaconf import DictConfig

from prefix_composer.runtime.run_folder import no_space_advice

log = logging.getLogger(__name__)

CHECKPOINT_FILENAME = 'ep{epoch}-ba{batch}-rank{rank}.pt'  # llm-foundry's default save_filename
LATEST_FILENAME = 'latest-rank{rank}.pt'  # llm-foundry's default save_latest_filename
CHECKPOINT_PATTERN = re.compile(r'^ep(\d+)-ba(\d+)-rank0\.pt$')
LATEST_NAME = 'latest-rank0.pt'
PARTIAL_PREFIX = 'partial-'  # in front of the name, so Composer still sees a .pt file
CORRUPT_SUFFIX = '.corrupt'
# A failed save with less than this free on its filesystem failed for want of space: torch's zip
# writer reports ENOSPC only as "file write failed", without the errno.
FULL_DISK_BYTES = 1 << 20


def checkpoint_files(folder: str) -> list[str]:
    """Complete rank-0 checkpoints in ``folder`` (``ep*-ba*-rank0.pt``), newest (highest batch) first."""
    found = []
    for name in os.listdir(folder):
        match = CHECKPOINT_PATTERN.match(name)
        if match and os.path.isfile(os.path.join(folder, name)):
            found.append(((int(match.group(2)), int(match.group(1))), os.path.join(folder, name)))
    return [path for _, path in sorted(found, reverse=True)]


def newest_checkpoint(folder: str) -> tuple[Optional[int], Optional[str]]:
    """(batch, path) of the newest complete checkpoint in ``folder`` (``checkpoint_files``); (None, None)
    without one or without the folder."""
    newest = checkpoint_files(folder)[:1] if os.path.isdir(folder) else []
    return (int(CHECKPOINT_PATTERN.match(os.path.basename(newest[0])).group(2)), newest[0]) if newest else (None, None)


def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be loaded (not a complete zip archive, bad CRC), or None if it is intact.

    Reads the whole file once; this is what a truncated or partially written file fails.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f'{type(e).__name__}: {e}'
    return None if bad is None else f'CRC mismatch in {bad}'


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def partial_path(path: str) -> str:
    """Where ``path`` is written before it is renamed into place."""
    return os.path.join(os.path.dirname(path), PARTIAL_PREFIX + os.path.basename(path))


def point_symlink(link: str, target_name: str) -> None:
    """Make ``link`` a symlink to ``target_name`` (relative) with no moment where ``link`` is missing."""
    tmp = partial_path(link)
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target_name, tmp)
    os.replace(tmp, link)
    fsync_path(os.path.dirname(os.path.abspath(link)))


def remove_partial_files(folder: str) -> list[str]:
    """Delete ``partial-*`` leftovers of saves or symlink swaps that a kill interrupted."""
    removed = []
    for name in sorted(os.listdir(folder)):
        if name.startswith(PARTIAL_PREFIX):
            os.remove(os.path.join(folder, name))
            removed.append(name)
    if removed:
        log.warning('Removed unfinished checkpoint writes in %s: %s', folder, ', '.join(removed))
    return removed


def check_checkpoint_space(folder: str) -> None:
    """Raise ``OSError`` (ENOSPC) when the filesystem of ``folder`` has less free space than the newest
    complete checkpoint in it takes, i.e. the next save would fail; the message says how many MB to
    free on which device. Nothing to compare with (no checkpoint yet): no check."""
    if not os.path.isdir(folder):
        return
    newest = checkpoint_files(folder)[:1]
    if not newest:
        return
    needed = os.path.getsize(newest[0])
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(errno.ENOSPC, f'save_folder {folder} has no room for the next checkpoint: it needs '
                                    f'{needed / 1e6:.1f} MB (the size of {os.path.basename(newest[0])}), '
                                    f'{no_space_advice(folder)}. Free {(needed - free) / 1e6:.1f} MB on that device and '
                                    f'restart; keep the checkpoints in {folder}, they are where the run resumes from '
                                    '(moving save_folder elsewhere would start it again from batch 0).')


def failed_save(path: str, error: BaseException) -> OSError:
    """Delete the half-written ``path`` and return the error to raise: ENOSPC with the device's free
    space when the disk is full (``FULL_DISK_BYTES``), else the path and ``error``."""
    if os.path.lexists(path):
        os.remove(path)
    folder = os.path.dirname(path)
    kept = 'the checkpoints saved before it are intact and latest-rank0.pt still points at the newest'
    if shutil.disk_usage(folder).free < FULL_DISK_BYTES:
        return OSError(errno.ENOSPC, f'Saving checkpoint {path} failed: no space left on device (ENOSPC), '
                                     f'{no_space_advice(folder)} ({type(error).__name__}: {error}). The partial file '
                                     f'was removed; {kept}. Free space on that device and restart: the run resumes '
                                     'from the newest checkpoint.')
    return OSError(f'Saving checkpoint {path} failed ({type(error).__name__}: {error}). The partial file was '
                   f'removed; {kept}.')


def select_resume_checkpoint(folder: str) -> Optional[str]:
    """Point ``folder/latest-rank0.pt`` at the newest intact checkpoint and return its path.

    Broken newer checkpoints are renamed to ``<name>.corrupt`` (so neither autoresume nor Composer's
    "conflicting future checkpoint" check sees them again), each with a warning. Returns None when
    the folder holds no checkpoint (a fresh run); raises RuntimeError when it holds some and none
    is intact, rather than restarting from batch 0.
    """
    if not os.path.isdir(folder):
        return None
    remove_partial_files(folder)
    candidates = checkpoint_files(folder)
    latest = os.path.join(folder, LATEST_NAME)
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            name = os.path.basename(path)
            if not os.path.islink(latest) or os.readlink(latest) != name:
                previous = os.readlink(latest) if os.path.islink(latest) else 'missing'
                log.warning('%s was %s; pointing it at %s, the newest intact checkpoint.', latest, previous, name)
                point_symlink(latest, name)
            return path
        log.warning('Skipping checkpoint %s (%s); renamed to %s.', path, problem, path + CORRUPT_SUFFIX)
        os.replace(path, path + CORRUPT_SUFFIX)
    if candidates:
        raise RuntimeError(f'No checkpoint in {folder} can be loaded (all renamed to *{CORRUPT_SUFFIX}); '
                           'refusing to restart from batch 0. Inspect them, or move them away to start over.')
    if os.path.lexists(latest):
        log.warning('Removing %s: it points at no checkpoint.', latest)
        os.remove(latest)
    return None


def prune_checkpoints(folder: str, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest complete checkpoints in ``folder``; returns what was deleted."""
    doomed = checkpoint_files(folder)[keep:]
    for path in doomed:
        os.remove(path)
    return doomed


def local_save_folder(cfg: DictConfig) -> Optional[str]:
    """``save_folder`` with ``{run_name}`` formatted; None when it is unset or remote (``s3://...``), which
    the start-up checks skip (``launch.preflight`` warns once)."""
    folder = cfg.get('save_folder')
    if not folder or parse_uri(str(folder))[0]:
        return None
    return format_name_with_dist(str(folder), cfg.run_name)


def prepare_autoresume(cfg: DictConfig) -> Optional[str]:
    """Pre-flight for autoresume: ``select_resume_checkpoint`` on the run's ``local_save_folder``.

    Runs on global rank 0 only (env ``RANK``); the other ranks read ``latest-rank0.pt`` only after
    rank 0 has joined Composer's autoresume broadcast, i.e. after this. Returns the checkpoint the
    run will resume from (None: fresh start or autoresume off).
    """
    folder = local_save_folder(cfg)
    if not folder or not cfg.get('autoresume', False) or int(os.environ.get('RANK', '0')) != 0:
        return None
    if (cfg.get('save_filename') or CHECKPOINT_FILENAME) != CHECKPOINT_FILENAME or \
            (cfg.get('save_latest_filename') or LATEST_FILENAME) != LATEST_FILENAME:
        raise ValueError(f'autoresume pre-flight needs the default save_filename ({CHECKPOINT_FILENAME}) '
                         f'and save_latest_filename ({LATEST_FILENAME}).')
    chosen = select_resume_checkpoint(folder)
    log.info('Autoresume checkpoint: %s', chosen or 'none (fresh start)')
    return chosen


class AtomicCheckpointSaver(CheckpointSaver):
    """``CheckpointSaver`` whose local monolithic saves are atomic and whose retention is folder-wide.

    ``GracefulPreemption`` swaps the class of the Trainer's saver to this one at ``Event.INIT``.
    Sharded checkpoints and remote uploads fall back to Composer's ``_save_checkpoint``.
    """

    def _save_checkpoint(self, state: State, logger: Logger) -> None:
        remote = self.remote_uploader is not None or any(
            isinstance(d, RemoteUploaderDownloader) for d in logger.destinations)
        if state.fsdp_sharded_state_dict_enabled or remote or self.num_checkpoints_to_keep == 0:
            log.warning('Checkpoint saved by Composer (not atomically): sharded, remote or keep=0.')
            super()._save_checkpoint(state, logger)
            return
        self.last_checkpoint_batch = state.timestamp.batch
        template = self.filename.format(state, keep_placeholders=True)
        final = checkpoint.get_save_filename(state, template)
        self.all_saved_checkpoints_to_timestamp[final] = state.timestamp
        try:
            written = checkpoint.save_checkpoint(state, partial_path(template), weights_only=self.weights_only,
                                                 ignore_keys=self.ignore_keys)
        except (OSError, RuntimeError) as e:
            raise failed_save(partial_path(final), e) from e
        if not written:  # only rank 0 writes a monolithic checkpoint
            return
        fsync_path(written)
        os.replace(written, final)
        folder = os.path.dirname(final)
        fsync_path(folder)
        if self.latest_filename is not None:
            point_symlink(self.latest_filename.format(state), os.path.basename(final))
        self.saved_checkpoints.append(final)
        if self.num_checkpoints_to_keep > 0:
            deleted = prune_checkpoints(folder, self.num_checkpoints_to_keep)
            self.saved_checkpoints = [p for p in self.saved_checkpoints if p not in deleted]
