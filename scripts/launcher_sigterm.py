"""What a launcher does with SIGTERM: ``uv run python scripts/launcher_sigterm.py [--delays 2 40]``.

For each launcher (Composer's ``composer`` and ``python -m prefix_composer.runtime.launcher``),
as an ordinary process and as PID 1 of a new PID namespace (``unshare --pid --fork``, what a
container's entry process is; needs root, else those rows are skipped), and for each delay: start
``-n 1`` of a rank script whose SIGTERM handler takes ``delay`` seconds and then exits 0; once
the rank runs, send SIGTERM to the launcher only. Prints one Markdown row per case: whether the
rank got SIGTERM, whether it finished its handler, and the launcher's exit code and time.
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


def run_case(launcher: list[str], as_pid1: bool, delay: float, folder: str) -> dict:
    out = os.path.join(folder, f'rank_{len(os.listdir(folder))}.txt')
    script = os.path.join(folder, 'rank.py')
    prefix = ['unshare', '--pid', '--fork', '--mount-proc'] if as_pid1 else []
    wrapper = subprocess.Popen([*prefix, *launcher, '-n', '1', script, out, str(delay)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = launcher_pid(wrapper, as_pid1)
    while not (os.path.exists(out) and 'started' in open(out).read()):
        if wrapper.poll() is not None:
            raise RuntimeError(f'{launcher} exited with {wrapper.returncode} before the rank started')
        time.sleep(0.2)
    sent = time.time()
    os.kill(pid, signal.SIGTERM)
    code = wrapper.wait(timeout=300)
    lines = open(out).read().split()
    return {'rank got SIGTERM': 'sigterm' in lines, 'rank finished': 'finished' in lines,
            'exit': code, 'seconds': time.time() - sent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--delays', type=float, nargs='+', default=[2.0, 40.0],
                        help="seconds the rank's SIGTERM handler takes (a checkpoint's write time)")
    args = parser.parse_args()
    pid1 = [False, True] if os.geteuid() == 0 and shutil.which('unshare') else [False]
    print('| launcher | PID 1 | handler s | rank got SIGTERM | rank finished | exit | s after SIGTERM |')
    print('|---|---|---|---|---|---|---|')
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, 'rank.py'), 'w') as f:
            f.write(RANK_SCRIPT)
        for name, launcher in LAUNCHERS.items():
            for as_pid1 in pid1:
                for delay in args.delays:
                    r = run_case(launcher, as_pid1, delay, folder)
                    print(f'| `{name}` | {"yes" if as_pid1 else "no"} | {delay:g} | {r["rank got SIGTERM"]} | '
                          f'{r["rank finished"]} | {r["exit"]} | {r["seconds"]:.1f} |', flush=True)


if __name__ == '__main__':
    main()
