"""What a launcher does with SIGTERM: ``uv run python scripts/launcher_sigterm.py [--delays 2 40] [--sigterms 1 2]``.

For each launcher (Composer's ``composer`` and ``python -m prefix_composer.runtime.launcher``),
as an ordinary process and as PID 1 of a new PID namespace (``unshare --pid --fork``, what a
container's entry process is; as root, else in a user namespace, else those rows are skipped),
for each delay and each number of SIGTERMs: start ``-n 1`` of a rank script whose SIGTERM
handler takes ``delay`` seconds and then exits 0; once the rank runs, send that many SIGTERMs,
``GAP_S`` apart, to the launcher only. Prints one Markdown row per case: whether the rank got
SIGTERM, whether it finished its handler, and the launcher's exit code and time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Optional

RANK_SCRIPT = textwrap.dedent('''
    import signal, sys, time
    out, delay = sys.argv[1], float(sys.argv[2])
    def note(line):
        with open(out, 'a') as f:
            f.write(line + '\\n')
    def on_sigterm(signum, frame):
        note('sigterm')
        time.sleep(delay)
        note('finished')
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_sigterm)
    note('started')
    while True:
        time.sleep(0.1)
''')

GAP_S = 0.5  # between repeated SIGTERMs (kubelet and a user's kubectl delete, say)

LAUNCHERS = {
    'composer': [os.path.join(os.path.dirname(sys.executable), 'composer')],
    'prefix_composer.runtime.launcher': [sys.executable, '-m', 'prefix_composer.runtime.launcher'],
}


def launcher_pid(wrapper: subprocess.Popen, as_pid1: bool) -> int:
    """The launcher's PID: the wrapper itself, or unshare's child (PID 1 inside its namespace)."""
    if not as_pid1:
        return wrapper.pid
    while True:
        children = subprocess.run(['pgrep', '-P', str(wrapper.pid)], capture_output=True, text=True).stdout.split()
        if children:
            return int(children[0])
        if wrapper.poll() is not None:
            raise RuntimeError(f'unshare exited with {wrapper.returncode} before starting the launcher')
        time.sleep(0.1)


def pid1_prefix() -> Optional[list[str]]:
    """The command that starts a process as PID 1 of a new PID namespace, or None where that is not allowed."""
    if not shutil.which('unshare'):
        return None
    pid1 = ['unshare', '--pid', '--fork', '--mount-proc']
    if os.geteuid() == 0:
        return pid1
    user = ['unshare', '--user', '--map-root-user', '--pid', '--fork', '--mount-proc']
    return user if subprocess.run([*user, 'true'], capture_output=True).returncode == 0 else None


def run_case(launcher: list[str], as_pid1: bool, delay: float, folder: str, sigterms: int = 1) -> dict:
    out = os.path.join(folder, f'rank_{len(os.listdir(folder))}.txt')
    script = os.path.join(folder, 'rank.py')
    prefix = pid1_prefix() if as_pid1 else []
    if prefix is None:
        raise RuntimeError('no PID namespace: unshare is missing or not allowed')
    wrapper = subprocess.Popen([*prefix, *launcher, '-n', '1', script, out, str(delay)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = launcher_pid(wrapper, as_pid1)
    while not (os.path.exists(out) and 'started' in open(out).read()):
        if wrapper.poll() is not None:
            raise RuntimeError(f'{launcher} exited with {wrapper.returncode} before the rank started')
        time.sleep(0.2)
    sent = time.time()
    for i in range(sigterms):
        if i:
            time.sleep(GAP_S)
        if wrapper.poll() is None:
            os.kill(pid, signal.SIGTERM)
    code = wrapper.wait(timeout=300)
    lines = open(out).read().split()
    return {'rank got SIGTERM': 'sigterm' in lines, 'rank finished': 'finished' in lines,
            'exit': code, 'seconds': time.time() - sent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--delays', type=float, nargs='+', default=[2.0, 40.0],
                        help="seconds the rank's SIGTERM handler takes (a checkpoint's write time)")
    parser.add_argument('--sigterms', type=int, nargs='+', default=[1, 2],
                        help=f'how many SIGTERMs to send to the launcher, {GAP_S} s apart')
    args = parser.parse_args()
    pid1 = [False, True] if pid1_prefix() is not None else [False]
    print('| launcher | PID 1 | SIGTERMs | handler s | rank got SIGTERM | rank finished | exit | s after SIGTERM |')
    print('|---|---|---|---|---|---|---|---|')
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, 'rank.py'), 'w') as f:
            f.write(RANK_SCRIPT)
        for name, launcher in LAUNCHERS.items():
            for as_pid1 in pid1:
                for sigterms in args.sigterms:
                    for delay in args.delays:
                        r = run_case(launcher, as_pid1, delay, folder, sigterms)
                        print(f'| `{name}` | {"yes" if as_pid1 else "no"} | {sigterms} | {delay:g} | '
                              f'{r["rank got SIGTERM"]} | {r["rank finished"]} | {r["exit"]} | {r["seconds"]:.1f} |',
                              flush=True)


if __name__ == '__main__':
    main()
