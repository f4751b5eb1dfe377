"""scripts/compare_runs.py on hand-made run folders: a planted effect is found and marked, no effect
marks nothing, numbers equal what is computed here from the items, families are never mixed and
differently evaluated runs are refused."""

from __future__ import annotations

import csv
import math

import numpy as np
import pandas as pd
import pytest

from lm_eval_helpers import load_script
from prefix_composer.analysis.plotting import plt
from prefix_composer.analysis.report import write_report
from prefix_composer.analysis.stats import minimum_detectable_effect
from prefix_composer.evaluation.records import Records, read_header, run_identity, write_records

MODEL_100M = {'model_type': 'llama', 'vocab_size': 128256, 'hidden_size': 576, 'num_hidden_layers': 7,
              'num_attention_heads': 9, 'num_key_value_heads': 3, 'intermediate_size': 1536}
MODEL_500M = {**MODEL_100M, 'hidden_size': 1536, 'num_hidden_layers': 11, 'num_attention_heads': 12,
              'num_key_value_heads': 4, 'intermediate_size': 4096}
CE = {'objective': 'ce', 'eps': 0.0, 'tau': 1.0, 'support': 'inclusive'}
PREFIX = {'objective': 'prefix_softmax', 'eps': 1.0, 'tau': 1.0, 'support': 'inclusive'}
TASKS = {'hellaswag': 300, 'charbench_count_single': 200, 'charbench_first_single': 200}
GROUPS = {'charbench_single': ['charbench_count_single', 'charbench_first_single']}
NLL = 'metrics/eval/LanguageCrossEntropy'


def difficulty(seed: int = 0) -> dict[str, np.ndarray]:
    """Per-item probability of a correct answer, shared by every run (items have a difficulty)."""
    gen = np.random.default_rng(seed)
    return {task: gen.beta(2, 5, size=n) for task, n in TASKS.items()}


def outcomes(p: dict[str, np.ndarray], seed: int, boost: dict[str, float]) -> dict[str, np.ndarray]:
    gen = np.random.default_rng(seed)
    return {task: (gen.random(q.size) < np.clip(q + boost.get(task, 0.0), 0, 1)).astype(float) for task, q in p.items()}


def items_of(acc: dict[str, np.ndarray]) -> list[dict]:
    items = []
    for task, values in acc.items():
        for doc_id, v in enumerate(values):
            gold = doc_id % 4
            lls = [-5.0] * 4
            lls[gold if v else (gold + 1) % 4] = -1.0
            metrics = {'acc': float(v), 'acc_norm': float(v)} if task == 'hellaswag' else {'acc': float(v)}
            items.append({'task': task, 'doc_id': doc_id, 'gold': gold, 'loglikelihoods': lls, 'metrics': metrics})
    return items


def make_run(root, name: str, seed: int, objective: dict, acc_by_tokens: dict[int, dict[str, np.ndarray]],
             model: dict = MODEL_100M, nll: dict[int, float] | None = None, **settings):
    folder = root / name
    for tokens, acc in acc_by_tokens.items():
        header = {
            'format': 'prefix_composer.lm_eval_records', 'version': 1, 'batch': tokens // 1000, 'tokens': tokens,
            'run': run_identity(name, seed, model, objective), 'groups': GROUPS, 'info': {},
            'higher_is_better': {t: {'acc': True, **({'acc_norm': True} if t == 'hellaswag' else {})}
                                 for t in [*TASKS, *GROUPS]},
            'settings': {'tasks': ['hellaswag', 'charbench_single'], 'limit': None, 'num_fewshot': 0,
                         'fewshot_random_seed': 1234, 'autocast': 'bfloat16', 'tokenizer_hash': 'abc',
                         'task_versions': {t: 1.0 for t in TASKS}, 'n_shot': {t: 0 for t in TASKS},
                         'items': {t: {'n': n, 'hash': f'h{t}'} for t, n in TASKS.items()}, **settings},
        }
        write_records(str(folder / 'lm_eval' / f'ba{tokens // 1000}.jsonl.gz'), Records(header, items_of(acc)))
    rows = [{'batch': t // 1000, 'tokens': t, 'wall_time_s': 1.0, 'phase': 'eval', NLL: v} for t, v in (nll or {}).items()]
    rows.append({'batch': 1, 'tokens': 1000, 'wall_time_s': 0.5, 'phase': 'train', 'loss/train/total': 9.0})
    pd.DataFrame(rows).to_csv(folder / 'metrics.csv', index=False)
    return folder


def report(paths, **kwargs):
    return write_report([str(p) for p in paths], n_boot=2000, n_perm=2000, **kwargs)


def rows_of(result, variant: str) -> dict[str, object]:
    (rows,) = result.rows.values()
    return {r.label: r for r in rows if r.variant == variant}


@pytest.fixture
def planted(tmp_path):
    """ce and prefix, 2 seeds each; prefix answers charbench_count_single 20 points more often."""
    p, runs = difficulty(), {}
    for k, seed in enumerate((17, 18)):
        suffix = f'_seed{k}' if k else ''
        runs['ce', seed] = outcomes(p, 100 + seed, {})
        runs['prefix', seed] = outcomes(p, 200 + seed, {'charbench_count_single': 0.2})
        make_run(tmp_path, f'ce{suffix}', seed, CE, {5000: runs['ce', seed]}, nll={5000: 4.0 + k / 10})
        make_run(tmp_path, f'prefix_unnorm_eps1{suffix}', seed, PREFIX, {5000: runs['prefix', seed]},
                 nll={5000: 3.9 + k / 10 + k / 50})
    return tmp_path, runs


def test_a_planted_effect_is_found_marked_and_computed_from_the_items(planted):
    root, runs = planted
    result = report([root])
    rows = rows_of(result, 'prefix_unnorm_eps1')
    count = rows['charbench_count_single acc']
    x = np.stack([runs['prefix', s]['charbench_count_single'] for s in (17, 18)])
    y = np.stack([runs['ce', s]['charbench_count_single'] for s in (17, 18)])
    assert count.diff == pytest.approx((x - y).mean()) and count.diff > 0.15
    assert count.ci_low > 0 and count.ci_low < count.diff < count.ci_high
    assert count.mean == pytest.approx(x.mean()) and count.sd == pytest.approx(np.std(x.mean(axis=1), ddof=1))
    assert (count.n_items, count.n_seeds, count.test, count.chance) == (200, 2, 'sign_flip exact', 0.25)
    assert count.p_adj < 0.05 and count.marked == 'better'
    assert rows['hellaswag acc_norm'].marked == '' and rows['hellaswag acc_norm'].p_adj > 0.05
    # a null leaf with raw p 0.04 (BH leaves the larger of 2 p-values as it is): its CI holds 0, unmarked
    assert rows['charbench_first_single acc'].marked == '' and rows['charbench_first_single acc'].ci_low < 0
    # the group pools its tasks' items: the size-weighted mean, as lm-eval aggregates charbench_single
    pooled = np.concatenate([x, np.stack([runs['prefix', s]['charbench_first_single'] for s in (17, 18)])], axis=1)
    assert rows['charbench_single acc'].mean == pytest.approx(pooled.mean()) and rows['charbench_single acc'].n_items == 400
    assert list(rows) == ['hellaswag acc_norm', 'charbench_count_single acc', 'charbench_first_single acc',
                          'charbench_single acc', 'validation NLL']
    # validation NLL of metrics.csv: one value per run, paired by seed: differences -0.1 and -0.08;
    # run-level, description only: no test, no adjustment
    nll = rows['validation NLL']
    assert nll.diff == pytest.approx(-0.09) and nll.mean == pytest.approx(np.mean([3.9, 4.02]))
    assert nll.sd == pytest.approx(np.std([3.9, 4.02], ddof=1)) and nll.chance == pytest.approx(math.log(128256))
    assert math.isnan(nll.p) and nll.test == '' and nll.marked == '' and nll.section == 'run-level'
    half_width = 12.706205 * np.std([-0.1, -0.08], ddof=1) / math.sqrt(2)  # Student t, 1 degree of freedom
    assert (nll.ci_low, nll.ci_high) == pytest.approx((-0.09 - half_width, -0.09 + half_width), rel=1e-6)
    # the headline family: hellaswag and the group of leaf tasks, Holm over those 2; the leaf tasks
    # are exploratory, BH over those 2
    assert {label: r.section for label, r in rows.items()} == {
        'hellaswag acc_norm': 'headline', 'charbench_count_single acc': 'exploratory',
        'charbench_first_single acc': 'exploratory', 'charbench_single acc': 'headline', 'validation NLL': 'run-level'}
    first = rows['charbench_first_single acc'].p
    assert count.p_adj == pytest.approx(min(2 * count.p, first)) and count.p < first
    headline = sorted([rows['hellaswag acc_norm'].p, rows['charbench_single acc'].p])
    assert rows['charbench_single acc'].p_adj == pytest.approx(min(1, 2 * headline[0]))
    # MDE at level 0.05 / 2 from the observed second moment of the seed-averaged item differences
    d = (x - y).mean(axis=0)
    assert count.mde == pytest.approx(minimum_detectable_effect(np.mean(d ** 2), 200, 0.05 / 2))

    md = open(result.paths['markdown']).read()
    assert result.paths['markdown'] == str(root / 'report' / 'results.md')
    assert '| charbench_count_single | acc | 0.2500 | 200 | prefix_unnorm_eps1 | 2 |' in md and '**better**' in md
    assert 'Compared at **5,000 tokens** (batch 5)' in md
    assert 'The declared family: 2 tests, p adjusted together by Holm (family-wise error)' in md
    assert md.index('### Headline comparisons') < md.index('### Exploratory comparisons') < md.index('### Run-level rows')
    with open(result.paths['csv'], newline='') as f:
        table = list(csv.DictReader(f))
    assert len(table) == 10 and {r['variant'] for r in table} == {'ce', 'prefix_unnorm_eps1'}
    assert [r['section'] for r in table if r['variant'] == 'ce'] == ['headline', 'exploratory', 'exploratory', 'headline',
                                                                     'run-level']
    png = open(result.paths['forest d576-L7-h9kv3-ff1536-V128256'], 'rb').read()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000


def test_no_effect_marks_nothing(tmp_path):
    p = difficulty()
    for k, seed in enumerate((17, 18, 19)):
        suffix = f'_seed{k}' if k else ''
        make_run(tmp_path, f'ce{suffix}', seed, CE, {5000: outcomes(p, 100 + seed, {})}, nll={5000: 4.0})
        make_run(tmp_path, f'prefix_unnorm_eps1{suffix}', seed, PREFIX, {5000: outcomes(p, 200 + seed, {})},
                 nll={5000: 4.0 + (k - 1) / 100})
    rows = rows_of(report([tmp_path]), 'prefix_unnorm_eps1')
    assert [r.marked for r in rows.values()] == [''] * 5
    assert all(r.ci_low < 0 < r.ci_high for r in rows.values() if r.task != 'validation')
    assert all(r.n_seeds == 3 for r in rows.values())


def test_one_seed_uses_exact_mcnemar_and_gives_validation_no_interval(tmp_path):
    p = difficulty()
    base, variant = outcomes(p, 1, {}), outcomes(p, 2, {'hellaswag': 0.3})
    make_run(tmp_path, 'ce', 17, CE, {5000: base}, nll={5000: 4.0})
    make_run(tmp_path, 'prefix_unnorm_eps1', 17, PREFIX, {5000: variant}, nll={5000: 3.5})
    rows = rows_of(report([tmp_path]), 'prefix_unnorm_eps1')
    from scipy.stats import binomtest
    b = int(((variant['hellaswag'] == 1) & (base['hellaswag'] == 0)).sum())
    c = int(((variant['hellaswag'] == 0) & (base['hellaswag'] == 1)).sum())
    hs = rows['hellaswag acc_norm']
    assert hs.test == 'mcnemar' and hs.p == pytest.approx(binomtest(b, b + c, 0.5).pvalue) and hs.marked == 'better'
    assert math.isnan(hs.sd) and hs.n_seeds == 1
    nll = rows['validation NLL']
    assert nll.diff == pytest.approx(-0.5) and math.isnan(nll.p) and math.isnan(nll.ci_low) and nll.marked == ''


def test_families_are_never_mixed(tmp_path):
    p = difficulty()
    make_run(tmp_path, 'ce', 17, CE, {5000: outcomes(p, 1, {})})
    make_run(tmp_path, 'prefix_unnorm_eps1', 17, PREFIX, {5000: outcomes(p, 2, {})})
    make_run(tmp_path, 'b000_ce', 17, CE, {9000: outcomes(p, 3, {})}, model=MODEL_500M)
    make_run(tmp_path, 'b000_norm_tau1', 17, PREFIX, {9000: outcomes(p, 4, {})}, model=MODEL_500M)
    result = report([tmp_path])
    assert [(f.label, f.baseline, f.tokens, sorted(r.name for r in f.runs)) for f in result.families] == [
        ('d1536-L11-h12kv4-ff4096-V128256', 'b000_ce', 9000, ['b000_ce', 'b000_norm_tau1']),
        ('d576-L7-h9kv3-ff1536-V128256', 'ce', 5000, ['ce', 'prefix_unnorm_eps1'])]
    assert {r.variant for r in result.rows['d576-L7-h9kv3-ff1536-V128256']} == {'ce', 'prefix_unnorm_eps1'}

    # a 500M run next to 100M runs only: its family has no baseline, and the 100M ce is not used for it
    other = tmp_path / 'mixed'
    other.mkdir()
    make_run(other, 'ce', 17, CE, {5000: outcomes(p, 1, {})})
    make_run(other, 'prefix_unnorm_eps1', 17, PREFIX, {5000: outcomes(p, 2, {})}, model=MODEL_500M)
    with pytest.raises(ValueError, match=r"Family d1536-L11-h12kv4-ff4096-V128256 \(runs prefix_unnorm_eps1\) has no baseline "
                                         r"'ce'\. The 'ce' runs are in family d576-L7-h9kv3-ff1536-V128256 \(hidden_size 1536 "
                                         r"vs 576, intermediate_size 4096 vs 1536, .*never compared"):
        report([other])


def test_differently_evaluated_runs_are_refused_naming_the_difference(tmp_path):
    p = difficulty()
    make_run(tmp_path, 'ce', 17, CE, {5000: outcomes(p, 1, {})})
    make_run(tmp_path, 'prefix_unnorm_eps1', 17, PREFIX, {5000: outcomes(p, 2, {})}, limit=20,
             task_versions={t: 2.0 if t == 'hellaswag' else 1.0 for t in TASKS})
    with pytest.raises(ValueError, match=r"Runs 'ce' and 'prefix_unnorm_eps1' were evaluated differently \(lm_eval records "
                                         r"at 5,000 tokens: settings\.limit: null vs 20; "
                                         r"settings\.task_versions\.hellaswag: 1\.0 vs 2\.0\)"):
        report([tmp_path])


def test_compared_at_the_last_evaluation_every_run_has_reached(tmp_path):
    p = difficulty()
    make_run(tmp_path, 'ce', 17, CE, {t: outcomes(p, t, {}) for t in (1000, 2000, 3000)})
    make_run(tmp_path, 'prefix_unnorm_eps1', 17, PREFIX, {t: outcomes(p, t + 1, {}) for t in (1000, 2000)})  # still running
    assert report([tmp_path]).families[0].tokens == 2000
    assert report([tmp_path], at_tokens=1000).families[0].tokens == 1000
    with pytest.raises(ValueError, match=r'--at-tokens 3000: no records there for prefix_unnorm_eps1 \(\[1000, 2000\]\)'):
        report([tmp_path], at_tokens=3000)


def test_ambiguous_runs_are_refused(tmp_path):
    p = difficulty()
    make_run(tmp_path / 'a', 'ce', 17, CE, {5000: outcomes(p, 1, {})})
    make_run(tmp_path / 'b', 'ce', 17, CE, {5000: outcomes(p, 2, {})})
    with pytest.raises(ValueError, match=r"a/ce and .*b/ce are both variant 'ce' with seed 17; pass only one"):
        report([tmp_path / 'a', tmp_path / 'b'])
    make_run(tmp_path / 'c', 'ce_seed1', 18, PREFIX, {5000: outcomes(p, 2, {})})
    with pytest.raises(ValueError, match=r"both variant 'ce' but train different objectives"):
        report([tmp_path / 'a', tmp_path / 'c'])
    (tmp_path / 'empty' / 'norecords').mkdir(parents=True)
    (tmp_path / 'empty' / 'norecords' / 'metrics.csv').write_text('batch,tokens,phase\n')
    with pytest.raises(ValueError, match=r'norecords has no per-item lm-eval records .*eval_checkpoint\.py'):
        report([tmp_path / 'empty'])


def test_compare_runs_cli_prints_the_table_and_the_paths(planted, capsys):
    root, _ = planted
    out = root / 'out'
    assert load_script('compare_runs').main([str(root / 'ce'), str(root / 'ce_seed1'), str(root / 'prefix_unnorm_eps1'),
                                             str(root / 'prefix_unnorm_eps1_seed1'), '--adjust', 'bh', '--n-boot', '500',
                                             '--n-perm', '500', '--out-dir', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'Family d576-L7-h9kv3-ff1536-V128256: 4 runs at 5,000 tokens, baseline ce' in printed
    assert ('| task | metric | chance | items | variant | seeds | mean ± sd | Δ vs ce [95% CI] | p | p adj | MDE | marked |'
            in printed)
    assert f'Wrote markdown: {out / "results.md"}' in printed and 'Benjamini-Hochberg' in (out / 'results.md').read_text()


# -- measurement records (validation, probes, recovery) ------------------------------------------

VAL_CLASSES = ('nll_prefixes_0', 'nll_prefixes_3+')


def write_kind(folder, kind: str, tokens: int, name: str, seed: int, objective: dict, lines: list[dict],
               higher: dict, model: dict = MODEL_100M, baselines: dict | None = None, **settings):
    """A crafted ``<run>/<kind>/ba<batch>.jsonl.gz`` as the measurement passes write it."""
    tasks = sorted({i['task'] for i in lines})
    header = {
        'format': 'prefix_composer.lm_eval_records', 'version': 1, 'batch': tokens // 1000, 'tokens': tokens,
        'run': run_identity(name, seed, model, objective), 'groups': {}, 'info': {}, 'higher_is_better': higher,
        'settings': {'tasks': tasks, 'limit': None, 'num_fewshot': None, 'fewshot_random_seed': None, 'autocast': None,
                     'tokenizer_hash': 'abc', 'task_versions': {}, 'n_shot': {},
                     'items': {t: sum(i['task'] == t for i in lines) for t in tasks}, **settings},
        **({'baselines': baselines} if baselines else {}),
    }
    write_records(str(folder / kind / f'ba{tokens // 1000}.jsonl.gz'), Records(header, lines))


def validation_items(nll: np.ndarray, doc_ids=None) -> list[dict]:
    """Item i: overall nll[i]; class prefixes_0 = nll[i] + 1, prefixes_3+ null on every third sequence."""
    doc_ids = range(len(nll)) if doc_ids is None else doc_ids
    return [{'task': 'val', 'doc_id': int(d), 'tokens': 100, 'metrics': {
        'nll': float(v), 'nll_prefixes_0': float(v) + 1, 'nll_prefixes_3+': None if k % 3 == 0 else float(v) - 1}}
        for k, (d, v) in enumerate(zip(doc_ids, nll))]


def probe_items(correct: dict[str, np.ndarray]) -> list[dict]:
    return [{'task': task, 'doc_id': 1000 + i, 'metrics': {'acc': float(v)}}
            for task, values in correct.items() for i, v in enumerate(values)]


def recovery_items(logp: np.ndarray, frac: np.ndarray) -> list[dict]:
    return [{'task': 'recovery', 'doc_id': 2048 * i + 7, 'metrics': {
        'logp_gold': float(a) - 0.1, 'logp_marginal': float(a), 'recovered_fraction': float(b)}}
        for i, (a, b) in enumerate(zip(logp, frac))]


VAL_HIGHER = {'val': {m: False for m in ('nll', *VAL_CLASSES)}}
PROBE_HIGHER = {t: {'acc': True} for t in ('probe_contains', 'probe_first_letter', 'probe_length')}
RECOVERY_HIGHER = {'recovery': {m: True for m in ('logp_gold', 'logp_marginal', 'recovered_fraction')}}
PROBE_BASELINES = {t: {'acc': {'majority': 0.5, 'untrained': 0.55}} for t in PROBE_HIGHER}


@pytest.fixture
def measured(tmp_path):
    """ce and prefix, 2 seeds, with validation (prefix 0.02 nats lower NLL on every sequence, plus
    noise), probes (prefix +10 points on probe_first_letter) and recovery records at 5,000 tokens."""
    p, gen = difficulty(), np.random.default_rng(5)
    mu = gen.gamma(2.0, 1.0, size=600)
    letters = gen.beta(2, 2, size=(3, 400))
    data = {}
    for k, seed in enumerate((17, 18)):
        suffix = f'_seed{k}' if k else ''
        for variant, objective, shift, boost in (('ce', CE, 0.0, 0.0), ('prefix_unnorm_eps1', PREFIX, -0.02, 0.1)):
            name = variant + suffix
            folder = make_run(tmp_path, name, seed, objective, {5000: outcomes(p, seed + len(variant), {})})
            nll = mu + shift + gen.normal(0, 0.05, size=600)
            probes = {t: (gen.random(400) < np.clip(letters[j] + (boost if t == 'probe_first_letter' else 0), 0, 1))
                      .astype(float) for j, t in enumerate(PROBE_HIGHER)}
            logp, frac = -mu + gen.normal(0, 0.3, size=600), gen.uniform(0, 1, size=600)
            write_kind(folder, 'validation', 5000, name, seed, objective, validation_items(nll), VAL_HIGHER,
                       eval_data='manifest-1')
            write_kind(folder, 'probes', 5000, name, seed, objective, probe_items(probes), PROBE_HIGHER,
                       baselines=PROBE_BASELINES)
            write_kind(folder, 'recovery', 5000, name, seed, objective, recovery_items(logp, frac), RECOVERY_HIGHER)
            data[variant, seed] = dict(nll=nll, probes=probes)
    return tmp_path, data


def test_measurement_records_are_compared_item_paired(measured):
    root, data = measured
    result = report([root])
    rows = rows_of(result, 'prefix_unnorm_eps1')
    sections = {label: r.section for label, r in rows.items()}
    for label in ('val nll', 'probe_contains acc', 'probe_first_letter acc', 'probe_length acc',
                  'recovery logp_marginal', 'recovery recovered_fraction', 'hellaswag acc_norm', 'charbench_single acc'):
        assert sections.pop(label) == 'headline', label
    assert set(sections.values()) == {'exploratory'}
    assert sections['val nll_prefixes_0'] == sections['recovery logp_gold'] == 'exploratory'
    # val nll: the paired item differences, averaged over the 2 seeds
    x = np.stack([data['prefix_unnorm_eps1', s]['nll'] for s in (17, 18)])
    y = np.stack([data['ce', s]['nll'] for s in (17, 18)])
    val = rows['val nll']
    assert val.diff == pytest.approx((x - y).mean()) and val.n_items == 600 and val.kind == 'validation'
    assert val.test == 'sign_flip normal' and val.p < 1e-12 and val.marked == 'better'  # lower NLL is better
    m = sum(r.section == 'headline' for r in rows.values())
    assert m == 8 and val.mde == pytest.approx(minimum_detectable_effect(np.mean((x - y).mean(axis=0) ** 2), 600, 0.05 / m))
    # a class with a null on every third sequence: those items drop out of every run's row
    cls = rows['val nll_prefixes_3+']
    keep = np.arange(600) % 3 != 0
    assert cls.n_items == 400 and cls.diff == pytest.approx((x - y)[:, keep].mean())
    # probes: the planted +10 points, against the majority and step-0 baselines of the header
    first = rows['probe_first_letter acc']
    assert first.marked == 'better' and first.diff > 0.05 and (first.chance, first.untrained) == (0.5, 0.55)
    assert rows['probe_length acc'].marked == '' and rows['recovery logp_marginal'].marked == ''
    md = result.markdown
    assert '| probe_first_letter | acc | 0.5000 (step 0 0.5500) | 400 | prefix_unnorm_eps1 | 2 |' in md
    assert 'on lm_eval, validation, probes, recovery records' in md


def test_misaligned_items_are_refused_naming_the_run_and_task(measured):
    root, data = measured
    folder = root / 'prefix_unnorm_eps1_seed1'
    objective = PREFIX
    nll = data['prefix_unnorm_eps1', 18]['nll']
    # the same number of sequences, shifted by one sample index
    write_kind(folder, 'validation', 5000, folder.name, 18, objective, validation_items(nll, range(1, 601)), VAL_HIGHER,
               eval_data='manifest-1')
    with pytest.raises(ValueError, match=r"Run 'prefix_unnorm_eps1_seed1' .* has other validation items than run 'ce' for "
                                         r"task 'val' at 5,000 tokens: doc_id \[0\] missing, \[600\] extra"):
        report([root])
    # one sequence missing: the header's item count differs too, but the items are what is checked
    write_kind(folder, 'validation', 5000, folder.name, 18, objective, validation_items(nll[:599]), VAL_HIGHER,
               eval_data='manifest-1', items={'val': 600})
    with pytest.raises(ValueError, match=r"'prefix_unnorm_eps1_seed1' .* task 'val' .* doc_id \[599\] missing, \[\] extra "
                                         r"\(599 vs 600 items\)"):
        report([root])


def test_a_null_where_other_runs_have_a_value_is_refused(measured):
    root, data = measured
    folder = root / 'ce_seed1'
    items = validation_items(data['ce', 18]['nll'])
    items[4]['metrics']['nll_prefixes_3+'] = None
    write_kind(folder, 'validation', 5000, 'ce_seed1', 18, CE, items, VAL_HIGHER, eval_data='manifest-1')
    with pytest.raises(ValueError, match=r"Run 'ce_seed1' has null for validation val nll_prefixes_3\+ doc_id 4 where run "
                                         r"'ce' has a value \(1 such items\)"):
        report([root])


def test_a_run_lacking_a_kind_is_named_and_its_settings_checked(measured):
    root, _ = measured
    (root / 'prefix_unnorm_eps1' / 'probes' / 'ba5.jsonl.gz').unlink()
    result = report([root])
    assert not any(r.kind == 'probes' for r in result.rows[result.families[0].label])
    (note,) = [n for n in result.families[0].notes if n.startswith('probes')]
    assert note.startswith('probes: no records at 5,000 tokens for prefix_unnorm_eps1 (has probes at no tokens)')
    assert note in result.markdown
    # probes measured at other tokens than the lm-eval evaluation compared: every run is named
    for folder in root.iterdir():
        if (folder / 'lm_eval').is_dir():
            (folder / 'probes' / 'ba5.jsonl.gz').unlink(missing_ok=True)
            run = read_header(str(folder / 'lm_eval' / 'ba5.jsonl.gz'))['run']
            write_kind(folder, 'probes', 4000, run['run_name'], run['seed'], run['objective'],
                       probe_items({'probe_length': np.ones(10)}), PROBE_HIGHER)
    (note,) = [n for n in report([root]).families[0].notes if n.startswith('probes')]
    assert note.startswith('probes: no records at 5,000 tokens for ce (has probes at [4000] tokens), ce_seed1 (has probes '
                           'at [4000] tokens), prefix_unnorm_eps1')
    # validation records of other evaluation data are refused
    folder = root / 'ce_seed1'
    write_kind(folder, 'validation', 5000, 'ce_seed1', 18, CE, validation_items(np.ones(600)), VAL_HIGHER,
               eval_data='manifest-2')
    with pytest.raises(ValueError, match=r"evaluated differently \(validation records at 5,000 tokens: "
                                         r"settings\.eval_data: \"manifest-1\" vs \"manifest-2\"\)"):
        report([root])


# -- families, evaluations, settings -----------------------------------------------------------------

def test_two_families_with_the_same_short_label_are_both_reported(tmp_path):
    p = difficulty()
    other = {**MODEL_100M, 'rope_theta': 10000.0}
    make_run(tmp_path, 'ce', 17, CE, {5000: outcomes(p, 1, {})}, model={**MODEL_100M, 'rope_theta': 500000.0})
    make_run(tmp_path, 'prefix_unnorm_eps1', 17, PREFIX, {5000: outcomes(p, 2, {})},
             model={**MODEL_100M, 'rope_theta': 500000.0})
    make_run(tmp_path, 'ce_rope', 17, CE, {5000: outcomes(p, 3, {})}, model=other)
    make_run(tmp_path, 'prefix_rope', 17, PREFIX, {5000: outcomes(p, 4, {})}, model=other)
    result = report([tmp_path], baseline='ce')
    labels = [f.label for f in result.families]
    assert labels == ['d576-L7-h9kv3-ff1536-V128256-rope_theta500000.0', 'd576-L7-h9kv3-ff1536-V128256-rope_theta10000.0']
    assert [sorted({r.variant for r in result.rows[label]}) for label in labels] == [['ce', 'prefix_unnorm_eps1'],
                                                                                     ['ce_rope', 'prefix_rope']]
    frame = pd.read_csv(result.paths['csv'])
    assert sorted(frame['family'].unique()) == sorted(labels)
    assert all(f'## Family {label}' in result.markdown for label in labels)
    assert all(f'forest {label}' in result.paths for label in labels)


def test_a_deleted_lm_eval_record_is_named_not_skipped(tmp_path):
    p = difficulty()
    make_run(tmp_path, 'ce', 17, CE, {t: outcomes(p, t, {}) for t in (1000, 2000, 3000)}, nll={3000: 4.0})
    make_run(tmp_path, 'prefix_unnorm_eps1', 17, PREFIX, {t: outcomes(p, t + 1, {}) for t in (1000, 2000, 3000)},
             nll={3000: 4.0})
    (tmp_path / 'prefix_unnorm_eps1' / 'lm_eval' / 'ba3.jsonl.gz').unlink()  # damaged, deleted as advised
    with pytest.raises(ValueError, match=r"prefix_unnorm_eps1 lacks the lm-eval evaluation at 3,000 tokens although it "
                                         r"trained that far .* pass --at-tokens 2000 to compare at the last evaluation"):
        report([tmp_path])
    assert report([tmp_path], at_tokens=2000).families[0].tokens == 2000


def test_a_limit_difference_is_reported_first_and_short(tmp_path):
    p = difficulty()
    many = {f'charbench_task{k}': {'n': 300, 'hash': f'{k:064x}'} for k in range(60)}
    make_run(tmp_path, 'ce', 17, CE, {5000: outcomes(p, 1, {})}, items={**many})
    make_run(tmp_path, 'prefix_unnorm_eps1', 17, PREFIX, {5000: outcomes(p, 2, {})}, limit=20,
             items={t: {'n': 20, 'hash': f'{k + 1:064x}'} for k, t in enumerate(many)})
    with pytest.raises(ValueError) as refused:
        report([tmp_path])
    message = str(refused.value)
    assert 'lm_eval records at 5,000 tokens: settings.limit: null vs 20; settings.items.charbench_task0.hash:' in message
    assert 'and 118 more)' in message and len(message) < 450


def test_forest_plot_of_thirteen_variants(tmp_path):
    p = difficulty()
    make_run(tmp_path, 'b000_ce', 17, CE, {5000: outcomes(p, 1, {})})
    for k in range(12):
        objective = {**PREFIX, 'eps': round(0.1 * (k + 1), 1)}
        make_run(tmp_path, f'b000_prefix_variant_{k:02d}', 17, objective,
                 {5000: outcomes(p, 10 + k, {'charbench_count_single': 0.03 * k})})
    result = report([tmp_path])
    (family,) = result.families
    rows = result.rows[family.label]
    assert len({r.variant for r in rows}) == 13
    path = result.paths[f'forest {family.label}']
    image = plt.imread(path)
    # one panel per headline metric (hellaswag, charbench_single) side by side, 12 compared rows each
    assert image.shape[1] > image.shape[0] > 400
