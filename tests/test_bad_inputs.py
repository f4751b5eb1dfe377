"""Inputs refused before the model is built, each with the message that says what to fix.

The tables ``CONFIG_KEY_REFUSALS`` (override of yamls/smoke_cpu.yaml), ``OBJECTIVE_REFUSALS``
(``algorithms.prefix_smoothing`` arguments), ``NUMBER_REFUSALS`` (component, arguments) and
``SHARD_REFUSALS`` (damage to a shard, compression) pair each input with the expected message
fragment: a plain substring of the ``ValueError``'s message (in ``SHARD_REFUSALS`` a format string:
``{shard}``, ``{index}`` the files of the case, ``{size}``, ``{recorded}`` their sizes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf as om
from streaming import MDSWriter

from prefix_composer.config import load_config
from prefix_composer.data.manifest import COLUMNS, MANIFEST_NAME, MDS_FORMAT, check_run_data
from prefix_composer.tokenizer import tokenizer_content_hash
from prefix_composer.objectives.targets import ObjectiveSpec
from prefix_composer.runtime.config_checks import check_config_keys
from prefix_composer.runtime.preemption import GracefulPreemption
from prefix_composer.training.algorithm import PrefixSmoothing
from prefix_composer.training.eps_schedule import objective_spec

REPO = Path(__file__).resolve().parent.parent
SMOKE = str(REPO / 'yamls' / 'smoke_cpu.yaml')
COMMITTED_YAMLS = sorted(str(p.relative_to(REPO)) for folder in ('', 'replicas', 'base') for p in (REPO / 'yamls' / folder).glob('*.yaml'))
REBUILD = 'rebuild the data: scripts/create_mds.py --run-config <the run YAML> --overwrite.'


def refusal(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        call(*args, **kwargs)
    return str(error.value)


# -- 16.2: keys that nothing reads ---------------------------------------------------------------

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


@pytest.mark.parametrize('override, message', CONFIG_KEY_REFUSALS)
def test_unknown_key_is_refused_with_the_closest_key(override, message):
    assert message in refusal(check_config_keys, load_config(SMOKE, [override]))


def test_every_unknown_key_is_named_at_once():
    lines = refusal(check_config_keys, load_config(SMOKE, [o for o, _ in CONFIG_KEY_REFUSALS])).splitlines()
    assert len(lines) == len(CONFIG_KEY_REFUSALS)


@pytest.mark.parametrize('yaml', COMMITTED_YAMLS)
def test_committed_yaml_has_no_unknown_key(yaml):
    check_config_keys(load_config(str(REPO / yaml)))


def test_composer_cli_refuses_a_model_config_typo_before_training(tmp_path):
    """The real ``composer train.py``: refused before the data check (no MDS data here) and the model."""
    command = [os.path.join(os.path.dirname(sys.executable), 'composer'), 'train.py', SMOKE,
               'model.config.num_hiden_layers=1', f'variables.run_root={tmp_path}', f'variables.data.mds_dir={tmp_path / "none"}']
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert CONFIG_KEY_REFUSALS[0][1] in output
    assert 'Starting training' not in output and not (tmp_path / 'smoke_cpu').exists()


# -- 16.3: arguments that do nothing, booleans for numbers -------------------------------------

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


@pytest.mark.parametrize('arguments, message', OBJECTIVE_REFUSALS)
def test_objective_argument_is_refused(arguments, message):
    """By the algorithm llm-foundry builds from the YAML block (before the model), with the full key."""
    assert message in refusal(PrefixSmoothing, **arguments)


@pytest.mark.parametrize('arguments', [dict(objective='ce', eps=0, tau=1), dict(objective='label_smoothing', eps=1.0),
                                       dict(objective='prefix_softmax_norm', eps=0.5, tau=2.0, support='strict')])
def test_parameters_at_their_default_or_read_by_the_objective_pass(arguments):
    assert ObjectiveSpec(**arguments).objective == arguments['objective']


@pytest.mark.parametrize('block, spec', [
    (dict(objective='ce'), ObjectiveSpec('ce', 0.0, 1.0, 'inclusive')),
    (dict(objective='label_smoothing', eps=0.1), ObjectiveSpec('label_smoothing', 0.1, 1.0, 'inclusive')),
    (dict(objective='prefix_simple', eps=0.2), ObjectiveSpec('prefix_simple', 0.2, 1.0, 'inclusive')),
    (dict(objective='prefix_softmax', eps=0.2), ObjectiveSpec('prefix_softmax', 0.2, 1.0, 'inclusive')),
    (dict(), ObjectiveSpec('ce', 0.0, 1.0, 'inclusive')),
])
def test_an_omitted_parameter_is_never_an_error(block, spec):
    """The algorithm, the spec and the YAML agree on one set of defaults: nothing the user did not write is named."""
    assert PrefixSmoothing(**block).spec == ObjectiveSpec(**block) == spec


def test_objective_ce_alone_in_a_yaml_is_accepted(tmp_path):
    """``objective: ce`` and nothing else in a YAML: accepted by the algorithm llm-foundry builds from it."""
    yaml = tmp_path / 'ce_only.yaml'
    cfg = om.load(SMOKE)
    cfg.algorithms.prefix_smoothing = {'objective': 'ce'}
    yaml.write_text(om.to_yaml(cfg))
    block = load_config(str(yaml)).algorithms.prefix_smoothing
    assert PrefixSmoothing(**block).spec == ObjectiveSpec('ce')


@pytest.mark.parametrize('yaml', COMMITTED_YAMLS)
def test_committed_yaml_objective_block_validates(yaml):
    """Generated YAMLs spell only the parameters their objective reads (the base: the unread ones neutral)."""
    block = load_config(str(REPO / yaml)).algorithms.prefix_smoothing
    assert PrefixSmoothing(**block).spec == objective_spec(**block)


NUMBER_REFUSALS = [  # (component, arguments, message fragment)
    (PrefixSmoothing, dict(objective='prefix_softmax', eps=0.1, warn_off_gold_below=True),
     'algorithms.prefix_smoothing.warn_off_gold_below must be a number >= 0, got True.'),
    (GracefulPreemption, dict(grace_seconds=True),
     'callbacks.graceful_preemption.grace_seconds must be a number of seconds > 0, got True.'),
]


@pytest.mark.parametrize('component, arguments, message', NUMBER_REFUSALS, ids=lambda x: getattr(x, '__name__', None))
def test_boolean_for_a_number_is_refused(component, arguments, message):
    assert message in refusal(component, **arguments)


# -- 16.4: damaged MDS shards -------------------------------------------------------------------

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


@pytest.fixture
def mds(tmp_path, tokenizer):
    return lambda compression=None: build_mds(tmp_path / 'mds', tokenizer, compression)


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


@pytest.mark.parametrize('damage, compression, message', SHARD_REFUSALS)
def test_damaged_shard_is_refused_naming_the_file(damage, compression, message, mds, tokenizer):
    root = mds(compression)
    shard = shard_file(root / 'train', 1)
    recorded = shard.stat().st_size
    SHARD_DAMAGE[damage](shard)
    size = shard.stat().st_size if shard.exists() else None
    cfg = load_config(SMOKE, [f'variables.data.mds_dir={root}', f'max_seq_len={SEQ}'])
    text = refusal(check_run_data, cfg, tokenizer)
    assert message.format(shard=shard, index=root / 'train' / 'index.json', size=size, recorded=recorded) in text
    assert text.endswith(REBUILD) and text.count('shard.') == 1  # shard 1 alone is named


def test_missing_index_is_refused(mds, tokenizer):
    root = mds()
    (root / 'val' / 'index.json').unlink()
    cfg = load_config(SMOKE, [f'variables.data.mds_dir={root}', f'max_seq_len={SEQ}'])
    assert f'eval_loader: damaged MDS data: {root / "val" / "index.json"} is missing' in refusal(check_run_data, cfg, tokenizer)


@pytest.mark.parametrize('compression', [None, 'zstd'])
def test_intact_shards_pass(compression, mds, tokenizer):
    root = mds(compression)
    assert len(list((root / 'train').glob('shard.*'))) >= 3
    check_run_data(load_config(SMOKE, [f'variables.data.mds_dir={root}', f'max_seq_len={SEQ}']), tokenizer)
