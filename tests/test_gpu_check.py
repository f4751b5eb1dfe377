"""scripts/gpu_check.py: ``--smoke`` runs every path on the CPU and its numerics pass; the numerics
gate stops before any timing; its FLOP count and GPU peak agree with llm-foundry's and Composer's."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf as om

from prefix_composer.config import load_config
from prefix_composer.objectives.targets import OBJECTIVES
from prefix_composer.objectives.vocab import read_byte_vocab, write_byte_vocab

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'scripts'))

import gpu_check  # noqa: E402


@pytest.fixture(scope='module')
def vocab_file(tmp_path_factory, byte_vocab):
    path = tmp_path_factory.mktemp('vocab') / 'llama3_vocab.json.gz'
    write_byte_vocab(str(path), *byte_vocab)
    return path


def test_byte_vocab_file_round_trips(vocab_file, byte_vocab):
    assert read_byte_vocab(str(vocab_file)) == byte_vocab


def test_smoke_runs_every_path_and_its_numerics_pass(vocab_file, tmp_path, capsys):
    assert gpu_check.main(['--smoke', '--device', 'cpu', '--repeats', '1', '--vocab', str(vocab_file), '--out', str(tmp_path)]) == 0
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    printed = capsys.readouterr().out
    assert 'numerics: max relative error' in printed and 'GPU check summary' in printed

    numerics = report['numerics']
    expected = {(o, s, p, d) for o, s in gpu_check.SPECS for p in ('logits', 'fused') for d in ('float32', 'bfloat16')}
    assert {(r['objective'], r['support'], r['path'], r['dtype']) for r in numerics} == expected
    for row in numerics:
        errors = [row[k] for k in ('loss', 'nll', 'grad_hidden', 'grad_weight')]
        assert row['ok'] and max(errors) <= gpu_check.BOUNDS[row['dtype']], row
    assert report['meta']['liger'].startswith('skipped') and report['meta']['vocab'] == gpu_check.SMOKE.vocab_limit

    methods = {r['method'] for r in report['loss'] if r['time_s'] > 0}
    assert methods == {f'fused {o}' for o in OBJECTIVES} | {'hf ce', 'F.cross_entropy ce', 'F.cross_entropy label_smoothing'}
    assert sum(r['best'] for r in report['chunks']) == len(gpu_check.SMOKE.loss_hidden)
    trained = {(r['config'], r['objective'], r['impl']) for r in report['train'] if r['tokens_per_s'] > 0}
    assert trained >= {(c, o, i) for c in gpu_check.BRIEF_YAMLS for o in OBJECTIVES for i in ('fused', 'logits')}
    numerics_goal = [g for g in report['goals'] if g['section'] == 'numerics']
    assert len(numerics_goal) == 1 and numerics_goal[0]['ok']


def test_numerics_gate_stops_before_timing(vocab_file, tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_check.BOUNDS, 'float32', 1e-20)
    with pytest.raises(SystemExit, match='exceed their bounds; no timing was run'):
        gpu_check.main(['--smoke', '--device', 'cpu', '--sections', 'loss', '--vocab', str(vocab_file), '--out', str(tmp_path)])
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert any(not r['ok'] for r in report['numerics']) and report['loss'] == []


def test_brief_configs_read_without_omegaconf_match_the_resolved_yamls():
    for path in gpu_check.BRIEF_YAMLS.values():
        cfg = load_config(str(REPO / path))
        resolved = om.to_container(cfg.model.config, resolve=True)
        config, micro_batch = gpu_check.brief_model_config(path, cfg.max_seq_len, {}, None)
        assert config == resolved and micro_batch == cfg.device_train_microbatch_size


def test_flops_per_sequence_is_llm_foundrys():
    from llmfoundry.models.mpt.modeling_mpt import ComposerMPTCausalLM

    n_params, n_layers, d_model, seq = 470_000_000, 11, 1536, 2048
    config = types.SimpleNamespace(block_overrides=None, n_layers=n_layers, d_model=d_model)
    mpt = types.SimpleNamespace(model=types.SimpleNamespace(config=config), n_active_params=n_params)
    mpt.get_attention_flops = lambda msl: ComposerMPTCausalLM.get_attention_flops(mpt, msl)
    batch = {'input_ids': types.SimpleNamespace(shape=(3, seq))}
    assert 3 * gpu_check.llm_foundry_flops_per_sequence(n_params, n_layers, d_model, seq) == \
        ComposerMPTCausalLM.flops_per_batch(mpt, batch)


def test_gpu_peak_is_composers():
    from composer.callbacks.speed_monitor import GPU_AVAILABLE_FLOPS

    assert gpu_check.BF16_PEAK_FLOPS == {'h100': GPU_AVAILABLE_FLOPS['h100-sxm']['amp_bf16'],
                                         'h200': GPU_AVAILABLE_FLOPS['h200-sxm']['amp_bf16']}
