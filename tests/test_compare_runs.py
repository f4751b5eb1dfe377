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
from prefix_composer.analysis.report import write_report
from prefix_composer.evaluation.records import Records, run_identity, write_records

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
    assert (count.n_items, count.n_seeds, count.test, count.chance) == (200, 2, 'sign_flip', 0.25)
    assert count.p_adj < 0.05 and count.marked == 'better'
    for label in ('hellaswag acc_norm', 'charbench_first_single acc'):
        assert rows[label].marked == '' and rows[label].p_adj > 0.05, label
    # the group pools its tasks' items: the size-weighted mean, as lm-eval aggregates charbench_single
    pooled = np.concatenate([x, np.stack([runs['prefix', s]['charbench_first_single'] for s in (17, 18)])], axis=1)
    assert rows['charbench_single acc'].mean == pytest.approx(pooled.mean()) and rows['charbench_single acc'].n_items == 400
    assert list(rows) == ['hellaswag acc_norm', 'charbench_count_single acc', 'charbench_first_single acc',
                          'charbench_single acc', 'validation NLL']
    # validation NLL: one value per run, paired by seed: differences -0.1 and -0.08
    nll = rows['validation NLL']
    assert nll.diff == pytest.approx(-0.09) and nll.mean == pytest.approx(np.mean([3.9, 4.02]))
    assert nll.sd == pytest.approx(np.std([3.9, 4.02], ddof=1)) and nll.chance == pytest.approx(math.log(128256))
    assert nll.p == 0.5 and nll.test == 'sign_flip over seeds' and nll.marked == ''  # 2 seeds: p >= 1/2
    half_width = 12.706205 * np.std([-0.1, -0.08], ddof=1) / math.sqrt(2)  # Student t, 1 degree of freedom
    assert (nll.ci_low, nll.ci_high) == pytest.approx((-0.09 - half_width, -0.09 + half_width), rel=1e-6)
    # Holm over the 5 comparisons: the smallest p times 5
    ps = sorted(r.p for r in rows.values())
    assert count.p_adj == pytest.approx(min(1, 5 * ps[0]))

    md = open(result.paths['markdown']).read()
    assert result.paths['markdown'] == str(root / 'report' / 'results.md')
    assert '| charbench_count_single | acc | 0.2500 | 200 | prefix_unnorm_eps1 | 2 |' in md and '**better**' in md
    assert 'Compared at **5,000 tokens** (batch 5)' in md and 'Holm (family-wise error) over the 5 comparisons' in md
    with open(result.paths['csv'], newline='') as f:
        table = list(csv.DictReader(f))
    assert len(table) == 10 and {r['variant'] for r in table} == {'ce', 'prefix_unnorm_eps1'}
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
    with pytest.raises(ValueError, match=r"Runs 'ce' and 'prefix_unnorm_eps1' were evaluated differently at 5,000 tokens "
                                         r"\(settings\.limit: null vs 20; settings\.task_versions\.hellaswag: 1\.0 vs 2\.0\)"):
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
    assert '| task | metric | chance | items | variant | seeds | mean ± sd | Δ vs ce [95% CI] | p | p adj | marked |' in printed
    assert f'Wrote markdown: {out / "results.md"}' in printed and 'Benjamini-Hochberg' in (out / 'results.md').read_text()
