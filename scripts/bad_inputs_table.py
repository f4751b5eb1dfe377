"""Every bad start-up input of the project, with the message it is refused with:
``uv run python scripts/bad_inputs_table.py [--out docs/bad_inputs.md]``.

This file owns the cases: the tables below (``BAD_CONFIG_REFUSALS``, ``CONFIG_KEY_REFUSALS``,
``OBJECTIVE_REFUSALS``, ``NUMBER_REFUSALS``, ``SHARD_REFUSALS``, ``UNWRITABLE_FOLDERS``), the two
run-folder cases (a changed seed on a recorded run, a folder locked by a live run) and the small
world they run in (an MDS set, a recorded run folder, a fake checkpoint). The tests run the same
cases (tests/test_training.py, tests/test_bad_inputs.py, tests/test_run_folder.py load this file),
and tests/test_bad_inputs_doc.py checks that docs/bad_inputs.md is this script's output.
Each case runs ``composer train.py yamls/smoke_cpu.yaml <overrides>``'s main
(``prefix_composer.runtime.launch.main``, in this process) on a small MDS set; the table holds
what stopped it (exception and message; the case's run root and MDS folder written ``<runs>`` and
``<mds>``). A case that starts training is a row marked NOT REFUSED and the exit code is 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
from streaming import MDSWriter

from prefix_composer.config import load_config
from prefix_composer.data.manifest import COLUMNS, MANIFEST_NAME, MDS_FORMAT
from prefix_composer.objectives.targets import NEUTRAL
from prefix_composer.runtime.experiment import RECORD_NAME, check_experiment
from prefix_composer.runtime.launch import main as train_main
from prefix_composer.runtime.preemption import GracefulPreemption
from prefix_composer.runtime.run_folder import lock_run_folder
from prefix_composer.tokenizer import PackagedLlama3Tokenizer, tokenizer_content_hash
from prefix_composer.training.algorithm import PrefixSmoothing

REPO = Path(__file__).resolve().parent.parent
SMOKE = str(REPO / 'yamls' / 'smoke_cpu.yaml')

# -- the cases ----------------------------------------------------------------------------------

BAD_CONFIG_REFUSALS = [  # (override of yamls/smoke_cpu.yaml, message fragment)
    ('algorithms.prefix_smoothing.objective=focal', "algorithms.prefix_smoothing.objective: unknown objective 'focal'"),
    ('algorithms.prefix_smoothing.eps=2', 'algorithms.prefix_smoothing.eps must be a number in'),
    ('algorithms.prefix_smoothing.tau=0', 'algorithms.prefix_smoothing.tau must be'),
    ('algorithms.prefix_smoothing.support=loose', 'algorithms.prefix_smoothing.support must be'),
    ('model.config.vocab_size=128000', 'smaller than the tokenizer'),
]


DURATION_REFUSALS = [  # (override of yamls/smoke_cpu.yaml, message fragment)
    ('save_interval=0ba', 'save_interval=0ba never saves a checkpoint'),
    ('save_interval=0ep', 'save_interval=0ep never saves a checkpoint'),
    ('save_interval=0.0dur', 'save_interval=0.0dur never saves a checkpoint'),
    ('save_interval=-5ba', 'save_interval=-5ba never saves a checkpoint'),
    ('save_interval=0', 'save_interval=0 never saves a checkpoint'),
    ('save_interval=often', "save_interval='often' is not a Composer duration"),
    ('max_duration=0ba', 'max_duration=0ba trains nothing. Set max_duration to the length of the run'),
    ('max_duration=0tok', 'max_duration=0tok trains nothing'),
]


CONFIG_KEY_REFUSALS = [  # (override of yamls/smoke_cpu.yaml, message fragment)
    ('model.config.num_hiden_layers=1',
     'model.config.num_hiden_layers is not a key of transformers.LlamaConfig (did you mean num_hidden_layers?); '
     'it would be ignored. Fix or remove it in the YAML or the override.'),
    ('model.config.hiden_size=64', 'model.config.hiden_size is not a key of transformers.LlamaConfig (did you mean hidden_size?)'),
    ('train_loader.dataset.shufle=false',
     "train_loader.dataset.shufle is not a key of llm-foundry's text dataset (StreamingTextDataset, StreamingDataset) "
     '(did you mean shuffle?); it would be ignored.'),
    ('eval_loader.dataset.max_seq_length=128', 'eval_loader.dataset.max_seq_length is not a key of llm-foundry\'s text '
     'dataset (StreamingTextDataset, StreamingDataset) (did you mean max_seq_len?)'),
    ('train_loader.dataset.streams.web.locl=/data',
     'train_loader.dataset.streams.web.locl is not a key of streaming.Stream (did you mean local?)'),
]


OBJECTIVE_REFUSALS = [  # (ObjectiveSpec / algorithms.prefix_smoothing arguments, message fragment)
    (dict(objective='ce', eps=0.5),
     "algorithms.prefix_smoothing.eps=0.5 has no effect on objective 'ce'; remove algorithms.prefix_smoothing.eps (or set "
     "it to 0.0) or use an objective that reads eps (label_smoothing, prefix_simple, prefix_softmax, prefix_softmax_norm)."),
    (dict(objective='ce', tau=2.0),
     "algorithms.prefix_smoothing.tau=2.0 has no effect on objective 'ce'; remove algorithms.prefix_smoothing.tau (or set "
     "it to 1.0) or use an objective that reads tau (prefix_softmax, prefix_softmax_norm)."),
    (dict(objective='ce', support='strict'),
     "algorithms.prefix_smoothing.support='strict' has no effect on objective 'ce'; remove algorithms.prefix_smoothing.support "
     "(or set it to 'inclusive') or use an objective that reads support (prefix_softmax, prefix_softmax_norm)."),
    (dict(objective='label_smoothing', eps=0.1, tau=0.5),
     "algorithms.prefix_smoothing.tau=0.5 has no effect on objective 'label_smoothing'; remove algorithms.prefix_smoothing.tau"),
    (dict(objective='label_smoothing', eps=0.1, support='strict'),
     "algorithms.prefix_smoothing.support='strict' has no effect on objective 'label_smoothing'"),
    (dict(objective='prefix_simple', eps=0.1, tau=0.05),
     "algorithms.prefix_smoothing.tau=0.05 has no effect on objective 'prefix_simple'; remove algorithms.prefix_smoothing.tau"),
    (dict(objective='prefix_simple', eps=0.1, support='strict'),
     "algorithms.prefix_smoothing.support='strict' has no effect on objective 'prefix_simple'"),
    (dict(objective='prefix_softmax', eps=True), 'algorithms.prefix_smoothing.eps must be a number in [0, 1] or a schedule'),
    (dict(objective='prefix_softmax', eps=1.0, tau=True), 'algorithms.prefix_smoothing.tau must be a finite number > 0, got True.'),
    # eps schedules (objectives/schedule.py): every value in [0, 1], t1 <= t2 in one unit, dur <= 1, known names and units
    (dict(objective='prefix_softmax', eps={'schedule': 'ptp', 'value': 1.5, 't1': '0.3dur', 't2': '0.6dur'}),
     'algorithms.prefix_smoothing.eps.value must be a number in [0, 1] (the largest eps of the schedule), got 1.5.'),
    (dict(objective='prefix_softmax', eps={'schedule': 'linear', 'value': -0.1}),
     'algorithms.prefix_smoothing.eps.value must be a number in [0, 1] (the largest eps of the schedule), got -0.1.'),
    (dict(objective='prefix_softmax', eps={'schedule': 'ptp', 'value': 0.2, 't1': '0.6dur', 't2': '0.3dur'}),
     'algorithms.prefix_smoothing.eps: t2=0.3dur is before t1=0.6dur; the decay ends at t2, so set t2 >= t1.'),
    (dict(objective='prefix_softmax', eps={'schedule': 'ptp', 'value': 0.2, 't1': '10ba', 't2': '0.5dur'}),
     'algorithms.prefix_smoothing.eps: t1=10ba and t2=0.5dur must be in the same unit.'),
    (dict(objective='prefix_softmax', eps={'schedule': 'linear', 'value': 0.2, 't2': '1.5dur'}),
     'algorithms.prefix_smoothing.eps.t2=1.5dur: a dur time is a fraction of max_duration, in [0, 1].'),
    (dict(objective='prefix_softmax', eps={'schedule': 'linear', 'value': 0.2, 't2': '2ep'}),
     "algorithms.prefix_smoothing.eps.t2=2ep: unit 'ep' is not allowed; use dur, ba, tok"),
    (dict(objective='prefix_softmax', eps={'schedule': 'linear', 'value': 0.2, 't2': '0.5days'}),
     "algorithms.prefix_smoothing.eps.t2='0.5days' is not a Composer time with a unit; write e.g. 0.5dur"),
    (dict(objective='prefix_softmax', eps={'schedule': 'cosine', 'value': 0.2}),
     "algorithms.prefix_smoothing.eps.schedule: unknown schedule 'cosine'; choose one of constant, linear, ptp."),
    (dict(objective='prefix_softmax', eps={'schedule': 'ptp', 'value': 0.2, 't2': '0.5dur'}),
     "algorithms.prefix_smoothing.eps.t1 is missing: schedule 'ptp' takes t1, t2"),
    (dict(objective='prefix_softmax', eps={'schedule': 'constant', 'value': 0.2, 't1': '5ba'}),
     "algorithms.prefix_smoothing.eps.t1=5ba has no effect on schedule 'constant'; remove it."),
    (dict(objective='label_smoothing', eps={'schedule': 'ptp', 'value': 0.2, 't1': '3ba', 't2': '6ba', 't3': '9ba'}),
     "algorithms.prefix_smoothing.eps: unknown keys ['t3'] in the schedule; it takes schedule, value, t1, t2."),
    (dict(objective='ce', eps={'schedule': 'constant', 'value': 0.2}),
     "algorithms.prefix_smoothing.eps={'schedule': 'constant', 'value': 0.2} has no effect on objective 'ce'"),
]


NUMBER_REFUSALS = [  # (component, arguments, message fragment)
    (PrefixSmoothing, dict(objective='prefix_softmax', eps=0.1, warn_off_gold_below=True),
     'algorithms.prefix_smoothing.warn_off_gold_below must be a number >= 0, got True.'),
    (GracefulPreemption, dict(grace_seconds=True),
     'callbacks.graceful_preemption.grace_seconds must be a number of seconds > 0, got True.'),
]


UNWRITABLE_FOLDERS = [  # (key named, override of yamls/smoke_cpu.yaml, regular file put in the way, folder named)
    ('save_folder', 'save_folder=/proc/x', None, '/proc/x'),
    ('loggers.csv.path', 'loggers.csv.path={tmp}/file/sub/metrics.csv', 'file', '{tmp}/file/sub'),
    ('callbacks.lm_eval.records_dir', 'callbacks.lm_eval.records_dir={tmp}/file/sub', 'file', '{tmp}/file/sub'),
    ('callbacks.lm_eval.records_dir (unset: <save_folder>/../lm_eval)', 'save_folder={tmp}/run/checkpoints',
     'run/lm_eval', '{tmp}/run/lm_eval'),
]


# -- the world a case runs in: an MDS set, a run folder ------------------------------------------

SEQ = 32
SAMPLES = 60


def write_split(folder: Path, compression: str | None = None) -> None:
    """SAMPLES samples of SEQ int32 ids in shards of about 2 KB (several shards per split)."""
    with MDSWriter(out=str(folder), columns=COLUMNS, compression=compression, size_limit=1 << 11) as writer:
        for i in range(SAMPLES):
            writer.write({'tokens': np.arange(i, i + SEQ, dtype=np.int32)})


def build_mds(root: Path, tokenizer, compression: str | None = None) -> Path:
    """train (3+ shards) and val MDS splits with the manifest create_mds writes, as far as the training check reads it."""
    write_split(root / 'train', compression)
    write_split(root / 'val', compression)
    manifest = {'format': MDS_FORMAT, 'splits': {'train': {}, 'val': {}},
                'config': {'tokenizer': {'name': 'llama3_packaged', 'content_sha256': tokenizer_content_hash(tokenizer)},
                           'max_seq_len': SEQ, 'compression': compression}}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    return root


def shard_file(split: Path, k: int) -> Path:
    """The file of shard ``k`` that is on disk: the zip of a compressed split, else the raw ``.mds``."""
    info = json.loads((split / 'index.json').read_text())['shards'][k]
    return split / (info['zip_data'] or info['raw_data'])['basename']


SHARD_DAMAGE = {
    'truncated to 100 bytes': lambda path: os.truncate(path, 100),
    'tail cut off': lambda path: os.truncate(path, path.stat().st_size - 3 * SEQ * 4),
    'missing': os.remove,
}
DAMAGED = 'train_loader: damaged MDS data: {shard} '
SHARD_REFUSALS = [  # (damage to shard 1 of train, compression, message fragment)
    ('truncated to 100 bytes', None, DAMAGED + 'has 100 bytes, {index} records {recorded:,}'),
    ('tail cut off', None, DAMAGED + 'has {size:,} bytes, {index} records {recorded:,}'),
    ('missing', None, DAMAGED + 'is missing'),
    ('truncated to 100 bytes', 'zstd', DAMAGED + 'has 100 bytes, {index} records {recorded:,}'),
]


def smoke_overrides(mds, run_root) -> list[str]:
    return [f'variables.data.mds_dir={mds}', f'variables.run_root={run_root}', 'max_seq_len=32',
            'global_train_batch_size=4', 'device_train_microbatch_size=4', 'device_eval_batch_size=4']


def smoke(mds, run_root, *extra):
    return load_config(SMOKE, [*smoke_overrides(mds, run_root), *extra])


def folder_of(run_root):
    return run_root / 'smoke_cpu' / 'checkpoints'


def record(run_root) -> dict:
    return json.loads((folder_of(run_root) / RECORD_NAME).read_text())


def started(mds, run_root, *extra):
    """A run folder as a first start leaves it: the experiment recorded."""
    os.makedirs(folder_of(run_root))
    check_experiment(smoke(mds, run_root, *extra), str(folder_of(run_root)), resuming=False)
    return record(run_root)


def fake_checkpoint(run_root) -> None:
    """An intact zip named as a checkpoint: the pre-flight selects it, so the run would resume it."""
    with zipfile.ZipFile(folder_of(run_root) / 'ep0-ba10-rank0.pt', 'w') as archive:
        archive.writestr('data.pkl', b'not loaded: the run stops before')


# -- the table ----------------------------------------------------------------------------------

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
    """Preparation: shard 1 of the train split damaged the way ``SHARD_DAMAGE[name]`` does."""
    def prepare(run_root: Path, mds: Path) -> None:
        SHARD_DAMAGE[name](shard_file(mds / 'train', 1))
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
    started(mds, run_root)
    fake_checkpoint(run_root)


def locked(run_root: Path, mds: Path):
    os.makedirs(folder_of(run_root))
    return lock_run_folder(str(folder_of(run_root)))


def cases() -> Iterator[Case]:
    for override, message in BAD_CONFIG_REFUSALS:
        yield Case('objective and model', f'`{override}`', message, [override])
    for override, message in CONFIG_KEY_REFUSALS:
        yield Case('keys nothing reads', f'`{override}`', message, [override])
    for override, message in DURATION_REFUSALS:
        yield Case('durations', f'`{override}`', message, [override])
    for arguments, message in OBJECTIVE_REFUSALS:
        yield Case('objective parameters', f'`algorithms.prefix_smoothing: {arguments}`', message,
                   objective_overrides(arguments))
    for component, arguments, message in NUMBER_REFUSALS:
        key = COMPONENT_KEYS[component]
        yield Case('numbers', f'`{key}: {arguments}`', message, overrides(key, arguments))
    for name, compression, message in SHARD_REFUSALS:
        yield Case('MDS data', f'shard 1 of train {name} ({compression or "uncompressed"})',
                   message.split('{')[0], [], damage(name), compression)
    for key, override, blocker, _ in UNWRITABLE_FOLDERS:
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
        train_main([SMOKE, *smoke_overrides(mds, run_root), *TINY_RUN, *overrides])
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

Generated by `uv run python scripts/bad_inputs_table.py` (do not edit by hand): each row is one of
the script's cases (the tests run the same ones), started as `composer train.py yamls/smoke_cpu.yaml
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
        clean_mds = {c: build_mds(Path(tmp) / f'clean_mds_{c}', tokenizer, c)
                     for c in {c for _, c, _ in SHARD_REFUSALS}}
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
