"""Experiment YAMLs: generated from their family base, identical except for the objective, with
the specified constants and a parameter count that a fresh count reproduces; same data order for
replica k of every variant, another order (and init seed) for another replica."""

from __future__ import annotations

import gc
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf as om
from streaming import MDSWriter
from streaming.base.util import clean_stale_shared_memory

from prefix_composer.analysis import families as report_families
from prefix_composer.analysis.runs import Run
from prefix_composer.config import SEED_SUFFIX, load_config
from prefix_composer.evaluation.records import run_identity
from prefix_composer.training.param_count import count_llama_parameters

REPO = Path(__file__).resolve().parent.parent
YAMLS = REPO / 'yamls'
sys.path.insert(0, str(REPO / 'scripts'))

import make_yamls  # noqa: E402
import objective_mass_table  # noqa: E402

FAMILIES = {f.base: [v.name for v in f.variants] for f in make_yamls.FAMILIES}
ALL_VARIANTS = [name for names in FAMILIES.values() for name in names]
SEEDS = make_yamls.DEFAULT_SEEDS
VARIANTS = {v.name: v for f in make_yamls.FAMILIES for v in f.variants}
# Replica k of a variant as the path stem relative to yamls/ (``ce``, ``replicas/ce_seed1``, ...).
REPLICAS = {(name, k): make_yamls.replica_file(VARIANTS[name], k).removesuffix('.yaml') for name in ALL_VARIANTS for k in SEEDS}
# The keys the base derives from variables.global_seed: all that may differ between replicas.
SEED_KEYS = {'variables.global_seed', 'seed', 'train_loader.dataset.shuffle_seed'}


def resolved(name: str, overrides: tuple[str, ...] = ()) -> dict:
    """The resolved config of ``yamls/<name>.yaml`` (``name`` may be ``replicas/<stem>``)."""
    return om.to_container(load_config(str(YAMLS / f'{name}.yaml'), overrides), resolve=True)


def flatten(tree, prefix: str = '') -> dict[str, object]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f'{prefix}{k}.'))
        return out
    return {prefix[:-1]: tree}


def without_objective(name: str, drop: tuple[str, ...] = ('algorithms',)) -> dict[str, object]:
    """Resolved config minus run_name and ``drop``; a path segment equal to run_name becomes a marker."""
    cfg = resolved(name)
    run_name = cfg.pop('run_name')
    for key in drop:
        cfg.pop(key)

    def mark(value):
        if not isinstance(value, str) or '/' not in value:
            return value
        return '/'.join('<run_name>' if part == run_name else part for part in value.split('/'))

    return {k: mark(v) for k, v in flatten(cfg).items()}


# -- generator ----------------------------------------------------------------------------------

def generated_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*.yaml'))


def test_committed_yamls_are_what_the_generator_writes(tmp_path):
    assert make_yamls.main(['--out-dir', str(tmp_path)]) == 0
    generated = generated_files(tmp_path)
    assert generated == sorted(f'{stem}.yaml' for stem in REPLICAS.values())
    assert len(generated) == (10 + 2 + 13) * len(SEEDS) and len(SEEDS) == 3
    by_hand = {'smoke_cpu.yaml'} | {str(p.relative_to(YAMLS)) for p in (YAMLS / 'base').iterdir()}
    assert set(generated_files(YAMLS)) - by_hand == set(generated), 'yamls/ holds YAMLs the generator does not write'
    for name in generated:
        assert (tmp_path / name).read_bytes() == (YAMLS / name).read_bytes(), f'yamls/{name} is stale'


def test_seeds_flag_sets_the_replicas(tmp_path, capsys):
    assert make_yamls.main(['--out-dir', str(tmp_path), '--seeds', '0', '4']) == 0
    assert generated_files(tmp_path) == sorted(make_yamls.replica_file(VARIANTS[n], k) for n in ALL_VARIANTS for k in (0, 4))
    assert (tmp_path / 'ce.yaml').read_bytes() == (YAMLS / 'ce.yaml').read_bytes()  # replica 0 is the same file
    replica = om.create((tmp_path / 'replicas' / 'ce_seed4.yaml').read_text())
    assert replica.run_name == 'ce_seed4' and replica.variables.global_seed == resolved('ce')['seed'] + 4
    with pytest.raises(SystemExit):
        make_yamls.main(['--out-dir', str(tmp_path), '--seeds', '1', '1'])
    assert '--seeds must be distinct' in capsys.readouterr().err


def test_check_flags_a_stale_yaml_and_exits_1(tmp_path, capsys):
    seeds = ['--seeds', '0', '1']
    assert make_yamls.main(['--out-dir', str(tmp_path), *seeds]) == 0
    assert make_yamls.main(['--check', '--out-dir', str(tmp_path), *seeds]) == 0
    stale = tmp_path / 'ce.yaml'
    stale.write_text(stale.read_text().replace('lr: 6.0e-4', 'lr: 1.0e-3'))
    (tmp_path / 'b000_unnorm_tau2.yaml').unlink()
    (tmp_path / 'replicas' / 'prefix_simple_seed1.yaml').unlink()
    capsys.readouterr()
    assert make_yamls.main(['--check', '--out-dir', str(tmp_path), *seeds]) == 1  # the script's exit status
    printed = capsys.readouterr().out
    assert f'stale: {stale} (differs)' in printed
    assert f'stale: {tmp_path / "b000_unnorm_tau2.yaml"} (missing)' in printed
    assert f'stale: {tmp_path / "replicas" / "prefix_simple_seed1.yaml"} (missing)' in printed
    assert 'label_smoothing.yaml' not in printed and 'ce_seed1.yaml' not in printed


def test_generator_refuses_a_base_without_one_algorithms_block():
    family = make_yamls.FAMILIES[0]
    base = (REPO / family.base).read_text()
    broken = base.replace('algorithms:\n', 'algorithm:\n')
    with pytest.raises(ValueError, match='exactly one'):
        make_yamls.render_variant(family, family.variants[0], broken, make_yamls.base_param_count(base))


def test_number_tags():
    assert [make_yamls.number_tag(t) for t in (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)] == ['0p05', '0p1', '0p2', '0p5', '1', '2']


# -- what the variants are -------------------------------------------------------------------------

def softmax(objective: str, eps, tau: float, support: str = 'inclusive') -> dict:
    return {'objective': objective, 'eps': eps, 'tau': tau, 'support': support}


# The algorithms.prefix_smoothing block of each variant: the objective and only the parameters it reads.
PTP_EPS = {'schedule': 'ptp', 'value': 0.2, 't1': '0.333dur', 't2': '0.667dur'}
EXPECTED_OBJECTIVES = {
    'ce': {'objective': 'ce'},
    'label_smoothing': {'objective': 'label_smoothing', 'eps': 0.1},
    'prefix_simple': {'objective': 'prefix_simple', 'eps': 0.1},
    'prefix_norm_eps0p1': softmax('prefix_softmax_norm', 0.1, 1.0),
    'prefix_norm_eps1': softmax('prefix_softmax_norm', 1.0, 1.0),
    'prefix_unnorm_eps0p1': softmax('prefix_softmax', 0.1, 1.0),
    'prefix_unnorm_eps1': softmax('prefix_softmax', 1.0, 1.0),
    'prefix_longest_eps0p1': softmax('prefix_softmax', 0.1, make_yamls.LONGEST_PREFIX_TAU, 'strict'),
    'prefix_ptp': softmax('prefix_softmax', PTP_EPS, 0.05, 'strict'),
    'prefix_ptp_const': softmax('prefix_softmax', 0.2, 0.05, 'strict'),
    'stochastok_ce': {'objective': 'ce'},
    'stochastok_prefix_unnorm_eps1': softmax('prefix_softmax', 1.0, 1.0),
    'b000_ce': {'objective': 'ce'},
    **{f'b000_norm_tau{tag}': softmax('prefix_softmax_norm', 1.0, t) for tag, t in
       [('0p05', 0.05), ('0p1', 0.1), ('0p2', 0.2), ('0p5', 0.5), ('1', 1.0), ('2', 2.0)]},
    **{f'b000_unnorm_tau{tag}': softmax('prefix_softmax', 1.0, t) for tag, t in
       [('0p05', 0.05), ('0p1', 0.1), ('0p2', 0.2), ('0p5', 0.5), ('1', 1.0), ('2', 2.0)]},
}

EXPECTED_STOCHASTOK = {'stochastok_ce': 0.1, 'stochastok_prefix_unnorm_eps1': 0.1}  # variant: expand_prop


@pytest.mark.parametrize('name, k', list(REPLICAS))
def test_variant_objective_and_run_name(name, k):
    cfg = resolved(REPLICAS[name, k])
    expected = {'prefix_smoothing': EXPECTED_OBJECTIVES[name]}
    if name in EXPECTED_STOCHASTOK:  # after prefix_smoothing: it splits before the first-batch measurement
        expected['stochastok'] = {'expand_prop': EXPECTED_STOCHASTOK[name]}
    assert cfg['algorithms'] == expected and list(cfg['algorithms']) == list(expected)
    run_name = Path(REPLICAS[name, k]).name
    assert run_name == (name if k == 0 else f'{name}_seed{k}')
    assert cfg['run_name'] == run_name  # = the YAML stem, so a restarted job resumes into the same folder
    assert cfg['save_folder'] == f'/mnt/runs/{run_name}/checkpoints' and cfg['autoresume'] is True
    assert cfg['loggers']['csv']['path'] == f'/mnt/runs/{run_name}/metrics.csv'


def differing_keys(a: dict[str, object], b: dict[str, object]) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


@pytest.mark.parametrize('k', SEEDS)
@pytest.mark.parametrize('base', list(FAMILIES))
def test_variants_of_a_family_differ_only_in_objective_and_run_name(base, k):
    names = FAMILIES[base]
    reference = without_objective(REPLICAS[names[0], k])
    assert len(reference) > 60
    for name in names[1:]:
        diff = differing_keys(reference, without_objective(REPLICAS[name, k]))
        assert not diff, f'replica {k}: {names[0]} and {name} differ in {sorted(diff)}'


@pytest.mark.parametrize('base', list(FAMILIES))
def test_replicas_of_a_variant_differ_only_in_the_seed(base):
    seeds = {}  # replica k -> its seed, the same for every variant
    for name in FAMILIES[base]:
        replicas = {k: without_objective(REPLICAS[name, k], drop=()) for k in SEEDS}
        for k in SEEDS[1:]:
            assert differing_keys(replicas[0], replicas[k]) == SEED_KEYS, f'{name}: replica 0 vs {k}'
        for k, cfg in replicas.items():
            assert len({cfg[key] for key in SEED_KEYS}) == 1  # init and data order follow one seed
            assert seeds.setdefault(k, cfg['seed']) == cfg['seed'], f'{name} replica {k} is not paired with {FAMILIES[base][0]}'
    assert len(set(seeds.values())) == len(SEEDS)


def test_compare_runs_pairs_the_replicas_by_seed():
    """compare_runs' identity of each replica (run_identity, as the lm-eval records store it) puts
    every YAML in its family, under its variant, one run per seed, the same seeds for all variants."""
    runs = []
    for stem in REPLICAS.values():
        cfg = resolved(stem)
        run = run_identity(cfg['run_name'], cfg['seed'], cfg['model']['config'], cfg['algorithms']['prefix_smoothing'])
        runs.append(Run(folder=stem, name=run['run_name'], variant=SEED_SUFFIX.sub('', run['run_name']),
                        seed=run['seed'], objective=run['objective'], model=run['model'], records={}, validation={},
                        trained_tokens=0))
    families = report_families.group_families(runs)
    assert sorted(sorted({r.variant for r in f}) for f in families) == sorted(sorted(names) for names in FAMILIES.values())
    for family in families:
        variants = report_families.check_variants(family)
        seed_sets = {frozenset(seeds) for seeds in variants.values()}
        assert len(seed_sets) == 1 and len(next(iter(seed_sets))) == len(SEEDS)
        for variant, seeds in variants.items():
            assert {run.folder for run in seeds.values()} == {REPLICAS[variant, k] for k in SEEDS}


def test_family_constants():
    for names in FAMILIES.values():
        cfg = resolved(names[0])
        assert cfg['max_duration'] == '2000000000tok'
        assert cfg['max_seq_len'] == 2048 and cfg['model']['config']['max_position_embeddings'] == 2048
        gpus = 8
        micro = cfg['device_train_microbatch_size']
        assert cfg['global_train_batch_size'] % (gpus * micro) == 0
        assert cfg['train_loader']['dataset']['shuffle_seed'] == cfg['seed'] == 17
    # Both families read the same data (same tokenizer and sequence length) and batch size.
    a, b = (resolved(names[0]) for names in FAMILIES.values())
    assert a['variables']['data'] == b['variables']['data'] and a['tokenizer'] == b['tokenizer']
    assert a['global_train_batch_size'] == b['global_train_batch_size'] == 256


def test_brief000_model_has_the_specified_dims_exactly():
    config = resolved('b000_ce')['model']['config']
    assert {k: config[k] for k in ('hidden_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads',
                                   'intermediate_size', 'max_position_embeddings', 'rope_theta', 'rms_norm_eps',
                                   'tie_word_embeddings', 'vocab_size')} == {
        'hidden_size': 1536, 'num_hidden_layers': 11, 'num_attention_heads': 12, 'num_key_value_heads': 4,
        'intermediate_size': 4096, 'max_position_embeddings': 2048, 'rope_theta': 1e6, 'rms_norm_eps': 1e-5,
        'tie_word_embeddings': True, 'vocab_size': 128256,
    }


def test_brief001_model_keeps_brief000_ratios_at_about_100m():
    config = resolved('ce')['model']['config']
    assert config['num_attention_heads'] == 3 * config['num_key_value_heads']  # GQA 3:1
    assert 3 * config['intermediate_size'] == 8 * config['hidden_size']  # FFN 8/3 x hidden
    assert (config['rope_theta'], config['rms_norm_eps'], config['tie_word_embeddings']) == (1e6, 1e-5, True)
    assert abs(count_llama_parameters(config).total - 100e6) < 2.5e6


PARAM_LINE = re.compile(r'^# Model: ([\d,]+) parameters = ([\d,]+) tied embedding', re.MULTILINE)


@pytest.mark.parametrize('base', list(FAMILIES))
def test_parameter_count_comment_is_recomputed(base):
    counts = {}
    for name in FAMILIES[base]:
        total, embedding = (int(x.replace(',', '')) for x in PARAM_LINE.search((YAMLS / f'{name}.yaml').read_text()).groups())
        counts[name] = (total, embedding)
    assert len(set(counts.values())) == 1
    total, embedding = next(iter(counts.values()))
    config = resolved(FAMILIES[base][0])['model']['config']
    d, v, ffn, layers = config['hidden_size'], config['vocab_size'], config['intermediate_size'], config['num_hidden_layers']
    kv_dim = d // config['num_attention_heads'] * config['num_key_value_heads']
    # Independent closed form: tied embedding + per layer (q,o: d*d; k,v: d*kv_dim; SwiGLU 3*d*ffn; 2 norms) + final norm.
    assert embedding == v * d
    assert total == v * d + layers * (2 * d * d + 2 * d * kv_dim + 3 * d * ffn + 2 * d) + d
    assert count_llama_parameters(config).total == total


# -- same data order ----------------------------------------------------------------------------

SEQ_LEN = 16


@pytest.fixture(scope='module')
def numbered_mds(tmp_path_factory):
    """train split of 64 distinct samples: sample i holds ids i*SEQ_LEN .. i*SEQ_LEN+SEQ_LEN-1."""
    root = tmp_path_factory.mktemp('mds')
    with MDSWriter(out=str(root / 'train'), columns={'tokens': 'ndarray:int32'}, size_limit=1 << 12) as writer:
        for i in range(64):
            writer.write({'tokens': np.arange(i * SEQ_LEN, (i + 1) * SEQ_LEN, dtype=np.int32)})
    return root


def first_train_batch(name: str, mds_dir: Path, tokenizer) -> np.ndarray:
    from llmfoundry.data.dataloader import build_dataloader

    overrides = (f'variables.data.mds_dir={mds_dir}', f'max_seq_len={SEQ_LEN}', 'train_loader.num_workers=0',
                 'train_loader.prefetch_factor=null', 'train_loader.persistent_workers=false')
    cfg = resolved(name, overrides)
    clean_stale_shared_memory()
    spec = build_dataloader(cfg['train_loader'], tokenizer, 4)
    batch = next(iter(spec.dataloader))['input_ids'].numpy().copy()
    del spec
    gc.collect()
    return batch


@pytest.mark.parametrize('k', SEEDS[:2])
def test_replica_k_of_every_variant_sees_the_same_first_batch(k, numbered_mds, tokenizer):
    names = ('ce', 'prefix_unnorm_eps1', 'b000_norm_tau0p05')
    batches = {name: first_train_batch(REPLICAS[name, k], numbered_mds, tokenizer) for name in names}
    ce = batches['ce']
    assert ce.shape == (4, SEQ_LEN)
    rows = ce[:, 0] // SEQ_LEN
    assert (ce == rows[:, None] * SEQ_LEN + np.arange(SEQ_LEN)).all()  # whole samples
    assert not np.array_equal(rows, np.arange(4))  # shuffled, not the first 4 samples
    for name, batch in batches.items():
        np.testing.assert_array_equal(batch, ce, err_msg=f'{name} replica {k} sees another first batch than ce')
    # The comparison can fail: the next replica of ce sees another batch.
    other = first_train_batch(REPLICAS['ce', k + 1], numbered_mds, tokenizer)
    assert not np.array_equal(other, ce), f'replicas {k} and {k + 1} of ce see the same first batch'


# -- the objective mass table of yamls/README.md (scripts/objective_mass_table.py) ----------------
# All 23 tables take minutes on the real vocabulary: the test recomputes rows of ce, label smoothing,
# the 1.0-gold-weight tau 0.05 variant, one prefix softmax and the eps schedule (about 20 s on 2 cores).
CHECKED_ROWS = ['ce', 'label_smoothing', 'b000_unnorm_tau0p05', 'prefix_unnorm_eps0p1', 'prefix_ptp']


def mass_table_row(name: str) -> list[str]:
    with open(objective_mass_table.README) as f:
        _, block, _ = objective_mass_table.split_readme(f.read(), objective_mass_table.README)
    return next(line for line in block if line.startswith(f'| `{name}` |')).split(' | ')


def test_mass_table_rows_in_the_readme_are_current(capsys):
    assert objective_mass_table.main(['--check', '--variants', *CHECKED_ROWS]) == 0
    assert capsys.readouterr().out.strip().endswith(f'{len(CHECKED_ROWS)} rows of the objective mass table up to date in '
                                                    f'{objective_mass_table.README}.')
    # label smoothing in closed form: q_gold = 1 - eps, eps / (V - 1) on every other id
    vocab, eps = 128_256, 0.1
    entropy = -(1 - eps) * np.log(1 - eps) - eps * np.log(eps / (vocab - 1))
    assert mass_table_row('label_smoothing')[5:9] == ['0.1', '0.1', f'{entropy:.4g}', f'0 / {vocab:,} (0.0000)']
    assert mass_table_row('b000_unnorm_tau0p05')[8:] == [f'{vocab:,} / {vocab:,} (1.0000)',
                                                         'plain CE on this vocabulary (< 0.0001) |']


def test_mass_table_check_fails_on_a_planted_edit(tmp_path, capsys):
    with open(objective_mass_table.README) as f:
        text = f.read()
    planted = text.replace('| `label_smoothing` | `label_smoothing` | 0.1 | 1 | inclusive | 0.1 |',
                           '| `label_smoothing` | `label_smoothing` | 0.1 | 1 | inclusive | 0.11 |')
    planted = planted.replace(' | '.join(mass_table_row('b000_ce')) + '\n', '')  # the table's row, not the family table's
    assert planted.count('\n') == text.count('\n') - 1 and '0.11 |' in planted
    readme = tmp_path / 'README.md'
    readme.write_text(planted)
    assert objective_mass_table.main(['--check', '--readme', str(readme), '--variants', 'label_smoothing']) == 1
    assert capsys.readouterr().out.splitlines()[:2] == ['stale: b000_ce (missing)', 'stale: label_smoothing (differs)']
    readme.write_text(text.replace(objective_mass_table.END, ''))
    with pytest.raises(ValueError, match=f'^{re.escape(str(readme))} needs exactly one'):
        objective_mass_table.main(['--check', '--readme', str(readme), '--variants', 'ce'])
