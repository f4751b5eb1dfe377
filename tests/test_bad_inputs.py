"""Inputs refused before the model is built, each with the message that says what to fix.

The tables (owned by scripts/bad_inputs_table.py, which writes them to docs/bad_inputs.md)
``CONFIG_KEY_REFUSALS`` (override of yamls/smoke_cpu.yaml), ``OBJECTIVE_REFUSALS``
(``algorithms.prefix_smoothing`` arguments), ``NUMBER_REFUSALS`` (component, arguments) and
``SHARD_REFUSALS`` (damage to a shard, compression) pair each input with the expected message
fragment: a plain substring of the ``ValueError``'s message (in ``SHARD_REFUSALS`` a format string:
``{shard}``, ``{index}`` the files of the case, ``{size}``, ``{recorded}`` their sizes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf as om

from prefix_composer.config import load_config
from prefix_composer.data.manifest import check_run_data
from prefix_composer.objectives.targets import ObjectiveSpec
from prefix_composer.runtime.config_checks import check_config_keys
from prefix_composer.training.algorithm import PrefixSmoothing
from prefix_composer.training.eps_schedule import objective_spec

from lm_eval_helpers import load_script

REPO = Path(__file__).resolve().parent.parent
CASES = load_script('bad_inputs_table')  # the cases' owner (docs/bad_inputs.md is its table of them)
SMOKE, SEQ, build_mds, shard_file = CASES.SMOKE, CASES.SEQ, CASES.build_mds, CASES.shard_file
CONFIG_KEY_REFUSALS, OBJECTIVE_REFUSALS, NUMBER_REFUSALS = CASES.CONFIG_KEY_REFUSALS, CASES.OBJECTIVE_REFUSALS, CASES.NUMBER_REFUSALS
SHARD_DAMAGE, SHARD_REFUSALS = CASES.SHARD_DAMAGE, CASES.SHARD_REFUSALS
COMMITTED_YAMLS = sorted(str(p.relative_to(REPO)) for folder in ('', 'replicas', 'base') for p in (REPO / 'yamls' / folder).glob('*.yaml'))
REBUILD = 'rebuild the data: scripts/create_mds.py --run-config <the run YAML> --overwrite.'


def refusal(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        call(*args, **kwargs)
    return str(error.value)


# -- keys that nothing reads -------------------------------------------------------------------


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


# -- arguments that do nothing, booleans for numbers ------------------------------------------


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


@pytest.mark.parametrize('component, arguments, message', NUMBER_REFUSALS, ids=lambda x: getattr(x, '__name__', None))
def test_boolean_for_a_number_is_refused(component, arguments, message):
    assert message in refusal(component, **arguments)


# -- damaged MDS shards --------------------------------------------------------------------------

@pytest.fixture
def mds(tmp_path, tokenizer):
    return lambda compression=None: build_mds(tmp_path / 'mds', tokenizer, compression)


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
