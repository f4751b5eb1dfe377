"""Every bad start-up input the tests name, with the message it is refused with:
``uv run python scripts/bad_inputs_table.py [--out docs/bad_inputs.md]``.

The cases are the tests' own tables (tests/test_training.py ``BAD_CONFIG_REFUSALS``,
tests/test_bad_inputs.py ``CONFIG_KEY_REFUSALS``, ``OBJECTIVE_REFUSALS``, ``NUMBER_REFUSALS``,
``SHARD_REFUSALS``, tests/test_run_folder.py ``UNWRITABLE_FOLDERS``) and the two run-folder cases
of tests/test_run_folder.py (a changed seed on a recorded run, a folder locked by a live run).
Each runs ``composer train.py yamls/smoke_cpu.yaml <overrides>``'s main
(``prefix_composer.runtime.launch.main``, in this process) on a small MDS set built like the tests
build it; the table holds what stopped it (exception and message; the case's run root and MDS
folder written ``<runs>`` and ``<mds>``). A case that starts training is a row marked NOT REFUSED and the exit code is 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'tests'))

import test_bad_inputs as bad  # noqa: E402
import test_run_folder as folder_tests  # noqa: E402
import test_training as training_tests  # noqa: E402

from prefix_composer.objectives.targets import NEUTRAL  # noqa: E402
from prefix_composer.runtime.launch import main as train_main  # noqa: E402
from prefix_composer.runtime.preemption import GracefulPreemption  # noqa: E402
from prefix_composer.runtime.run_folder import lock_run_folder  # noqa: E402
from prefix_composer.tokenizer import PackagedLlama3Tokenizer  # noqa: E402
from prefix_composer.training.algorithm import PrefixSmoothing  # noqa: E402

COMPONENT_KEYS = {PrefixSmoothing: 'algorithms.prefix_smoothing', GracefulPreemption: 'callbacks.graceful_preemption'}
RUNS, MDS = '<runs>', '<mds>'  # the case's variables.run_root and variables.data.mds_dir, as the table shows them
TINY_RUN = ['max_duration=1ba', 'eval_interval=1ba', 'eval_subset_num_batches=1']  # should a case get through


@dataclasses.dataclass
class Case:
    group: str
    shown: str                                  # the input, as the table shows it
    expected: str                               # what the test asserts the message holds
    overrides: list[str]
    prepare: Optional[Callable[[Path, Path], object]] = None  # (run root, MDS root) -> something to keep alive
    compression: Optional[str] = None           # of the case's MDS set


def overrides(key: str, arguments: dict) -> list[str]:
    """``key.<name>=<value>`` for each argument, booleans spelled as YAML's ``true``/``false``."""
    return [f'{key}.{k}={str(v).lower() if isinstance(v, bool) else v}' for k, v in arguments.items()]


def objective_overrides(arguments: dict) -> list[str]:
    """``algorithms.prefix_smoothing`` set to exactly ``arguments`` (the other parameters at their neutral value)."""
    return overrides('algorithms.prefix_smoothing', {'objective': arguments['objective'],
                                                     **{name: arguments.get(name, value) for name, value in NEUTRAL.items()}})


def damage(name: str) -> Callable[[Path, Path], None]:
    """Preparation: shard 1 of the train split damaged the way ``bad.SHARD_DAMAGE[name]`` does."""
    def prepare(run_root: Path, mds: Path) -> None:
        bad.SHARD_DAMAGE[name](bad.shard_file(mds / 'train', 1))
    return prepare


def block_with(blocker: Optional[str]) -> Optional[Callable[[Path, Path], None]]:
    """Preparation: a regular file at ``<runs>/<blocker>``, so nothing can be created below it."""
    if blocker is None:
        return None

    def prepare(run_root: Path, mds: Path) -> None:
        (run_root / blocker).parent.mkdir(parents=True, exist_ok=True)
        (run_root / blocker).write_text('')
    return prepare


def recorded_run(run_root: Path, mds: Path) -> None:
    """A run folder holding a checkpoint and the experiment recorded at its first start (seed 17)."""
    folder_tests.started(mds, run_root)
    folder_tests.fake_checkpoint(run_root)


def locked(run_root: Path, mds: Path):
    os.makedirs(folder_tests.folder_of(run_root))
    return lock_run_folder(str(folder_tests.folder_of(run_root)))


def cases() -> Iterator[Case]:
    for override, message in training_tests.BAD_CONFIG_REFUSALS:
        yield Case('objective and model', f'`{override}`', message, [override])
    for override, message in bad.CONFIG_KEY_REFUSALS:
        yield Case('keys nothing reads', f'`{override}`', message, [override])
    for arguments, message in bad.OBJECTIVE_REFUSALS:
        yield Case('objective parameters', f'`algorithms.prefix_smoothing: {arguments}`', message,
                   objective_overrides(arguments))
    for component, arguments, message in bad.NUMBER_REFUSALS:
        key = COMPONENT_KEYS[component]
        yield Case('numbers', f'`{key}: {arguments}`', message, overrides(key, arguments))
    for name, compression, message in bad.SHARD_REFUSALS:
        yield Case('MDS data', f'shard 1 of train {name} ({compression or "uncompressed"})',
                   message.split('{')[0], [], damage(name), compression)
    for key, override, blocker, _ in folder_tests.UNWRITABLE_FOLDERS:
        shown = f'`{override.format(tmp=RUNS)}`' + (f' with a file at `{RUNS}/{blocker}`' if blocker else '')
        yield Case('output folders', shown, f'{key}: cannot write to', [override, 'callbacks.lm_eval.tasks=[charbench]'],
                   block_with(blocker))
    yield Case('run folder', '`seed=18` on a run folder whose checkpoints were trained with seed 17', 'seed: 17 -> 18',
               ['seed=18'], recorded_run)
    yield Case('run folder', 'the same run folder while another live run holds it', 'is in use by another live run',
               [], locked)


def refusal(case: Case, work: Path, clean_mds: dict[Optional[str], Path]) -> tuple[str, str]:
    """(exception type, message) that stopped ``case``'s start-up, or ('NOT REFUSED', '')."""
    run_root, mds = work / 'runs', work / 'mds'
    shutil.copytree(clean_mds[case.compression], mds)
    kept = case.prepare(run_root, mds) if case.prepare else None
    overrides = [o.replace('{tmp}', str(run_root)) for o in case.overrides]
    try:
        train_main([str(bad.SMOKE), *folder_tests.smoke_overrides(mds, run_root), *TINY_RUN, *overrides])
    except Exception as error:  # what stopped it is the row
        return type(error).__name__, str(error).replace(str(run_root), RUNS).replace(str(mds), MDS)
    finally:
        if kept is not None:
            kept.close()
    return 'NOT REFUSED', ''


def cell(text: str) -> str:
    """``text`` as one Markdown table cell."""
    return text.replace('|', '\\|').replace('\n', '<br>')


def table(rows: list[tuple[Case, str, str]]) -> str:
    lines = ['| what | input | refused with | message |', '|---|---|---|---|']
    lines += [f'| {case.group} | {case.shown} | {kind} | {cell(message)} |' for case, kind, message in rows]
    return '\n'.join(lines)


HEADER = """# Inputs refused before training

Generated by `uv run python scripts/bad_inputs_table.py` (do not edit by hand): each row is a case
of the tests named in the script's docstring, started as `composer train.py yamls/smoke_cpu.yaml
<input>` (the real start-up, on a small MDS set), with the exception and message that stopped it
before the first batch. `<runs>` and `<mds>` are the case's `variables.run_root` and
`variables.data.mds_dir` (temporary folders).

"""


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=str(REPO / 'docs' / 'bad_inputs.md'))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = PackagedLlama3Tokenizer()
        clean_mds = {c: bad.build_mds(Path(tmp) / f'clean_mds_{c}', tokenizer, c)
                     for c in {c for _, c, _ in bad.SHARD_REFUSALS}}
        for k, case in enumerate(cases()):
            kind, message = refusal(case, Path(tmp) / f'case{k}', clean_mds)
            print(f'{case.shown}: {kind}: {message.splitlines()[0] if message else ""}', flush=True)
            rows.append((case, kind, message))
    with open(args.out, 'w') as f:
        f.write(HEADER + table(rows) + '\n')
    print(f'wrote {args.out}')
    return int(any(kind == 'NOT REFUSED' for _, kind, _ in rows))


if __name__ == '__main__':
    sys.exit(main())
