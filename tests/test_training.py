"""End-to-end training through llm-foundry's entry point with every objective, bad input (autoresume:
test_preemption, test_run_folder)."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from composer.models import HuggingFaceModel

from lm_eval_helpers import load_script, tiny_model
from prefix_composer.runtime.experiment import RECORD_NAME
from prefix_composer.runtime.launch import main as train_main
from prefix_composer.runtime.run_folder import LOCK_NAME
from prefix_composer.runtime.run_record import RECORD_NAME as START_RECORD_NAME
from prefix_composer.objectives.targets import OBJECTIVES

from conftest import write_token_mds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, 'yamls', 'smoke_cpu.yaml')
CASES = load_script('bad_inputs_table')  # the bad-input cases' owner


def tiny_overrides(mds, run_root, **extra) -> list[str]:
    settings = {
        'variables.data.mds_dir': str(mds), 'variables.run_root': str(run_root), 'max_seq_len': 32,
        'global_train_batch_size': 4, 'device_train_microbatch_size': 4, 'device_eval_batch_size': 4,
        'max_duration': '4ba', 'eval_interval': '2ba', 'save_interval': '2ba', 'eval_subset_num_batches': 2,
        'console_log_interval': '1ba', 'python_log_level': 'warning', **extra,
    }
    return [f'{k}={v}' for k, v in settings.items()]


def read_metrics(run_root, run_name) -> pd.DataFrame:
    return pd.read_csv(os.path.join(run_root, run_name, 'metrics.csv'))


CE_WARNING = 'this objective is plain cross-entropy on this data'


def setup_row(metrics: pd.DataFrame) -> pd.Series:
    setup = metrics[metrics.phase == 'setup']
    assert setup.batch.tolist() == [0]  # measured before batch 1
    return setup.iloc[0]


@pytest.mark.parametrize('objective', OBJECTIVES)
def test_every_objective_trains(objective, tiny_mds, tmp_path, tokenizer, capfd):
    train_main([SMOKE, *tiny_overrides(tiny_mds, tmp_path, run_name=objective,
                                        **{'algorithms.prefix_smoothing.objective': objective,
                                           'algorithms.prefix_smoothing.eps': 0.0 if objective == 'ce' else 0.1})])
    metrics = read_metrics(tmp_path, objective)
    train = metrics[metrics.phase == 'train']
    assert train.batch.tolist() == [1, 2, 3, 4]
    assert np.isfinite(train['loss/train/total']).all() and np.isfinite(train['loss/train/nll']).all()
    # random init: the plain NLL starts near ln|V|; the objective equals it only for ce
    assert abs(train['loss/train/nll'].iloc[0] - math.log(128256)) < 0.5
    gap = (train['loss/train/total'] - train['loss/train/nll']).abs().max()
    assert (gap < 1e-5) if objective == 'ce' else (gap > 1e-4)
    evals = metrics[metrics.phase == 'eval']
    assert evals.batch.tolist() == [2, 4] and evals['metrics/eval/LanguageCrossEntropy'].notna().all()
    strict, inclusive = evals['metrics/eval/PrefixMassStrict'], evals['metrics/eval/PrefixMassInclusive']
    assert ((0 < strict) & (strict < inclusive) & (inclusive < 1)).all()
    own_gap = (evals['metrics/eval/ObjectiveLoss'] - evals['metrics/eval/LanguageCrossEntropy']).abs().max()
    assert (own_gap < 1e-5) if objective == 'ce' else (own_gap > 1e-4)
    assert sorted(os.listdir(tmp_path / objective / 'checkpoints')) == sorted(
        ['ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt', 'latest-rank0.pt', RECORD_NAME, LOCK_NAME, START_RECORD_NAME])
    # What the objective asks for on the first batch: 4 sequences x 31 scored positions.
    setup = setup_row(metrics)
    mass, entropy = setup['metrics/setup/target_off_gold_mass'], setup['metrics/setup/target_entropy']
    assert setup['metrics/setup/target_positions'] == 4 * 31
    if objective == 'ce':
        assert mass == 0 and entropy == 0
    elif objective == 'label_smoothing':  # every position: 1-eps on gold, eps/(V-1) on each other id
        v = len(tokenizer)
        assert mass == pytest.approx(0.1, rel=1e-6)
        assert entropy == pytest.approx(-0.9 * math.log(0.9) - 0.1 * math.log(0.1 / (v - 1)), rel=1e-6)
    else:  # prefix objectives: at most eps, on the positions whose gold token has a prefix
        assert 1e-3 < mass <= 0.1 + 1e-7 and entropy > 0
    assert CE_WARNING not in capfd.readouterr().err  # llm-foundry's console handler writes the log to stderr


def test_an_objective_that_is_plain_ce_on_the_data_warns(tiny_mds, tmp_path, capfd):
    """The ~500M family's prefix_softmax at eps 1, tau 0.05: the gold token keeps all but ~1e-9 of the mass."""
    train_main([SMOKE, *tiny_overrides(tiny_mds, tmp_path, run_name='tau0p05', max_duration='1ba',
                                        **{'algorithms.prefix_smoothing.eps': 1.0, 'algorithms.prefix_smoothing.tau': 0.05})])
    mass = setup_row(read_metrics(tmp_path, 'tau0p05'))['metrics/setup/target_off_gold_mass']
    assert 0 < mass < 1e-4
    warnings = [line for line in capfd.readouterr().err.splitlines() if CE_WARNING in line]
    assert len(warnings) == 1 and 'WARNING' in warnings[0] and 'tau=0.05' in warnings[0]


@pytest.mark.parametrize('override, message', CASES.BAD_CONFIG_REFUSALS)
def test_bad_config_fails_before_training(override, message, tiny_mds, tmp_path):
    with pytest.raises(ValueError, match=message):
        train_main([SMOKE, *tiny_overrides(tiny_mds, tmp_path), override])
    assert not list((tmp_path / 'smoke_cpu' / 'checkpoints').glob('*.pt'))  # the folder exists: start-up probed it


def test_token_ids_outside_the_tokenizer_fail_on_the_first_batch(tmp_path):
    ids = [5, 17, 128255, 128300] * 64  # 128300 is no Llama-3 id
    write_token_mds(tmp_path / 'mds' / 'train', ids, 32)
    write_token_mds(tmp_path / 'mds' / 'val', ids, 32)
    with pytest.raises(ValueError, match='token id 128300, outside the tokenizer'):
        train_main([SMOKE, *tiny_overrides(tmp_path / 'mds', tmp_path / 'runs')])
    assert not list((tmp_path / 'runs' / 'smoke_cpu').glob('checkpoints/*.pt'))


def test_a_negative_token_id_fails_the_training_forward(tokenizer):
    model = tiny_model(tokenizer).train()
    with pytest.raises(ValueError, match=r"^The training data holds token id -3, outside the tokenizer's 128256 ids: the "
                                         r"dataset was tokenized with another tokenizer\. Rebuild it with scripts/create_mds\.py\.$"):
        model({'input_ids': torch.tensor([[5, -3, 17, 128255]])})
    assert model({'input_ids': torch.tensor([[5, 0, 17, 128255]])}).hidden_states.shape == (1, 4, 32)  # in range: runs


@pytest.mark.parametrize('loss_impl', ['fused', 'logits'])
def test_a_train_metric_sees_the_logits_of_the_training_weights(loss_impl, tokenizer):
    """Composer hands the training outputs to train metrics after the backward; the loss has consumed
    them (no logits on the fused path, log_softmax then the gradient on the logits path). The model
    scores the metric on a fresh forward instead: LanguageCrossEntropy equals the loss's own NLL."""
    from composer import Trainer
    from composer.loggers import InMemoryLogger
    from composer.metrics.nlp import LanguageCrossEntropy

    from lm_eval_helpers import token_loader

    model = tiny_model(tokenizer)
    model.loss_impl = loss_impl
    model.train_metrics = {'LanguageCrossEntropy': LanguageCrossEntropy()}
    memory = InMemoryLogger()
    Trainer(model=model, train_dataloader=token_loader(tokenizer, samples=8, batch_size=4), max_duration='2ba',
            optimizers=torch.optim.AdamW(model.parameters(), lr=1e-2), loggers=[memory], device='cpu', seed=17,
            progress_bar=False, log_to_console=False).fit()
    metric = [float(v) for _, v in memory.data['metrics/train/LanguageCrossEntropy']]
    nll = [float(v) for _, v in memory.data['loss/train/nll']]
    assert len(nll) == 2 and len(metric) >= 2  # one per batch (Composer logs the last again at the epoch's end)
    assert metric[:2] == pytest.approx(nll, rel=1e-5)
    assert 10.0 < metric[0] < 13.0  # about ln(128,256) = 11.76 at initialisation, not a gradient's scale


def test_checkpoint_metadata_is_composers_computed_once(tokenizer):
    """The HF config and tokenizer files every checkpoint carries equal Composer's derivation, made at
    the first save only."""
    model = tiny_model(tokenizer)
    first = model.get_metadata()
    assert first == HuggingFaceModel.get_metadata(model)
    assert first['model']['config']['content']['vocab_size'] == 128_256 and first['tokenizer']
    assert model.get_metadata() is first
