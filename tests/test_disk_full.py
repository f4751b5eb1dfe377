"""A full disk during a save and at the restart (runtime/checkpoints.py, runtime/run_folder.py, launch.preflight).

A failed save removes its partial file and says ENOSPC, the path and the device; the restart
deletes leftovers of an interrupted save before it asks for the room one checkpoint needs (the
size of the newest), and nothing saved is deleted. The first test fills a real 2 MB tmpfs (user
and mount namespace, as tests/private_shm_python); the others model the disk with ``os.statvfs``.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from composer.utils import checkpoint

from lm_eval_helpers import train_tiny
from prefix_composer.config import load_config
from prefix_composer.runtime.checkpoints import LATEST_NAME, checkpoint_problem, point_symlink
from prefix_composer.runtime.launch import checked_save_folder
from prefix_composer.runtime.preemption import GracefulPreemption

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, 'yamls', 'smoke_cpu.yaml')
MB = 1_000_000

ON_A_FULL_TMPFS = textwrap.dedent('''
    import errno, os, sys, torch
    from prefix_composer.runtime.checkpoints import check_checkpoint_space, failed_save, remove_partial_files
    from prefix_composer.runtime.run_folder import check_writable
    folder = sys.argv[1]
    torch.save({'w': torch.zeros(150_000)}, os.path.join(folder, 'ep0-ba2-rank0.pt'))  # 600 KB, complete
    def fill(name):  # what a save cut off by the full disk leaves
        with open(os.path.join(folder, name), 'wb') as f:
            try:
                while True:
                    f.write(b'x' * 65536)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
    fill('partial-ep0-ba4-rank0.pt')
    try:
        check_writable('save_folder', folder)
    except OSError as e:
        print('PROBE', e)
    print('REMOVED', remove_partial_files(folder))
    check_checkpoint_space(folder)
    check_writable('save_folder', folder)
    fill('other.bin')  # something else fills the disk again
    target = os.path.join(folder, 'partial-ep0-ba6-rank0.pt')
    try:
        torch.save({'w': torch.zeros(150_000)}, target)
    except RuntimeError as e:
        print('TORCH', e)
        print('SAVE', failed_save(target, e))
    try:
        check_checkpoint_space(folder)
    except OSError as e:
        print('SPACE', e)
    print('LEFT', sorted(os.listdir(folder)))
''')


def test_a_real_full_disk_is_named_and_the_partial_file_is_what_gets_deleted(tmp_path):
    if subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'true'], capture_output=True).returncode:
        pytest.skip('no user namespace here: cannot mount a small tmpfs')
    (tmp_path / 'disk').mkdir()
    (tmp_path / 'check.py').write_text(ON_A_FULL_TMPFS)
    result = subprocess.run(
        ['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c',
         f'mount -t tmpfs -o size=2m tmpfs {tmp_path / "disk"} && exec "$0" "$@"',
         sys.executable, str(tmp_path / 'check.py'), str(tmp_path / 'disk')],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(' ', 1) for line in result.stdout.splitlines())
    folder = str(tmp_path / 'disk')
    # the plain writability probe, had it come first, would refuse on the partial file's space
    assert lines['PROBE'].startswith(f'[Errno 28] save_folder: cannot write to {folder}: no space left (ENOSPC), 0.0 MB free on tmpfs')
    assert lines['REMOVED'] == "['partial-ep0-ba4-rank0.pt']"
    assert lines['TORCH'].startswith('[enforce fail at inline_container.cc')  # no errno, no path
    assert lines['SAVE'].startswith(f'[Errno 28] Saving checkpoint {folder}/partial-ep0-ba6-rank0.pt failed: no space left '
                                    f'on device (ENOSPC), 0.0 MB free on tmpfs (mounted at {folder})')
    assert 'The partial file was removed; the checkpoints saved before it are intact' in lines['SAVE']
    assert lines['SPACE'].startswith(f'[Errno 28] save_folder {folder} has no room for the next checkpoint: it needs 0.6 MB '
                                     '(the size of ep0-ba2-rank0.pt), 0.0 MB free on tmpfs')
    assert 'Free 0.6 MB on that device' in lines['SPACE']
    assert lines['LEFT'] == "['ep0-ba2-rank0.pt', 'other.bin']"


def disk_of(folder, capacity: int, monkeypatch):
    """Model ``folder`` as the only content of a disk of ``capacity`` bytes: ``os.statvfs`` of any path
    below it reports ``capacity`` minus the size of its files as free (so deleting a file frees space)."""
    real_statvfs = os.statvfs

    def statvfs(path):
        st = real_statvfs(path)
        if not os.path.abspath(path).startswith(str(folder)):
            return st
        used = sum(os.lstat(os.path.join(root, f)).st_size for root, _, files in os.walk(folder) for f in files)
        fields = list(st)
        fields[0] = fields[1] = 1  # f_bsize, f_frsize
        fields[2] = capacity  # f_blocks
        fields[3] = fields[4] = max(capacity - used, 0)  # f_bfree, f_bavail
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, 'statvfs', statvfs)


def checkpoint_folder(root):
    """A run folder after a save cut off by the full disk: two complete checkpoints (0.4 MB each),
    ``latest`` at the newest, the 0.3 MB partial file of the next."""
    folder = root / 'smoke_cpu' / 'checkpoints'
    folder.mkdir(parents=True)
    for batch in (2, 4):
        torch.save({'w': torch.zeros(100_000)}, folder / f'ep0-ba{batch}-rank0.pt')
    point_symlink(str(folder / LATEST_NAME), 'ep0-ba4-rank0.pt')
    (folder / 'partial-ep0-ba6-rank0.pt').write_bytes(b'x' * 300_000)
    return folder


@pytest.mark.parametrize('capacity_mb, room', [(1.3, True), (1.0, False)])
def test_restart_deletes_the_partial_file_before_asking_for_room_for_one_checkpoint(tmp_path, monkeypatch, capacity_mb, room):
    folder = checkpoint_folder(tmp_path)
    size = (folder / 'ep0-ba4-rank0.pt').stat().st_size
    disk_of(tmp_path, int(capacity_mb * MB), monkeypatch)
    cfg = load_config(SMOKE, [f'variables.run_root={tmp_path}'])
    if room:  # 1.3 MB - 2 x 0.4 MB = 0.5 MB free once the partial file is gone: room for one more
        assert checked_save_folder(cfg) == str(folder)
    else:
        with pytest.raises(OSError) as error:
            checked_save_folder(cfg)
        free = int(capacity_mb * MB) - 2 * size
        assert error.value.errno == errno.ENOSPC
        assert str(error.value) == (
            f'[Errno 28] save_folder {folder} has no room for the next checkpoint: it needs {size / MB:.1f} MB (the size of '
            f'ep0-ba4-rank0.pt), {free / MB:.1f} MB free on {os_device(folder)}. Free {(size - free) / MB:.1f} MB on that '
            f'device and restart; keep the checkpoints in {folder}, they are where the run resumes from (moving '
            'save_folder elsewhere would start it again from batch 0).')
    assert sorted(os.listdir(folder)) == ['ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt', LATEST_NAME]  # nothing saved is lost
    assert checkpoint_problem(str(folder / 'ep0-ba4-rank0.pt')) is None


def os_device(folder) -> str:
    from prefix_composer.runtime.run_folder import mount_of
    mount, device = mount_of(str(folder))
    return f'{device} (mounted at {mount})'


def test_a_save_that_fails_on_a_full_disk_names_the_file_and_enospc_and_keeps_the_last_checkpoint(
        tokenizer, tmp_path, monkeypatch):
    """The batch-4 save of a training run writes half its file and fails as torch does on a full disk."""
    folder = tmp_path / 'checkpoints'
    real_save = checkpoint.save_checkpoint

    def save_until_the_disk_is_full(state, filename, **kwargs):
        if int(state.timestamp.batch) < 4:
            return real_save(state, filename, **kwargs)
        path = checkpoint.get_save_filename(state, filename)
        with open(path, 'wb') as f:
            f.write(b'PK' + b'x' * 5000)
        disk_of(tmp_path, 0, monkeypatch)
        raise RuntimeError('[enforce fail at inline_container.cc:857] . PytorchStreamWriter failed writing file data/0: '
                           'file write failed')

    monkeypatch.setattr(checkpoint, 'save_checkpoint', save_until_the_disk_is_full)
    with pytest.raises(OSError) as error:
        train_tiny(tokenizer, '4ba', callbacks=[GracefulPreemption()], save_folder=str(folder), save_interval='2ba')
    message = str(error.value)
    assert error.value.errno == errno.ENOSPC
    assert message.startswith(f'[Errno 28] Saving checkpoint {folder}/partial-ep0-ba4-rank0.pt failed: no space left on '
                              f'device (ENOSPC), 0.0 MB free on {os_device(folder)} (RuntimeError: ')
    assert sorted(os.listdir(folder)) == ['ep0-ba2-rank0.pt', LATEST_NAME]
    assert os.readlink(folder / LATEST_NAME) == 'ep0-ba2-rank0.pt'
    assert checkpoint_problem(str(folder / 'ep0-ba2-rank0.pt')) is None
