"""scripts/plot_prefix_counts.py on the real Llama-3 vocabulary and scripts/plot_metrics.py on
generated metrics.csv files with known values."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'scripts'))

import plot_metrics  # noqa: E402
import plot_prefix_counts  # noqa: E402
from prefix_composer.evaluation.records import Records, run_identity, write_records  # noqa: E402

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def assert_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000, path


# -- prefix counts ------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def vocab_stats(byte_vocab):
    pieces, specials = byte_vocab
    return pieces, specials, plot_prefix_counts.prefix_stats(pieces, specials)


def test_prefix_stats_match_a_brute_force_count(vocab_stats):
    pieces, specials, stats = vocab_stats
    regular = [i for i in range(len(pieces)) if i not in specials]
    assert stats.n_prefixes.size == len(regular) == 128_000 and stats.n_special == 256
    by_bytes = {pieces[i]: i for i in regular}
    # Independent count for a spread of ids: every regular piece that `s.startswith` and is shorter.
    sample = np.random.default_rng(0).choice(len(regular), 60, replace=False)
    for k in sample:
        s = pieces[regular[k]]
        prefixes = [p for p in by_bytes if len(p) < len(s) and s.startswith(p)]
        assert stats.n_prefixes[k] == len(prefixes), s
        assert stats.longest_prefix[k] == max(map(len, prefixes), default=0), s
    personality = regular.index(by_bytes[b' personality'])
    assert {b' ', b' person', b' personal'} <= {p for p in by_bytes if b' personality'.startswith(p) and p != b' personality'}
    assert stats.longest_prefix[personality] >= len(b' personal')


def test_bucket_table_figures(vocab_stats):
    pieces, specials, stats = vocab_stats
    rows = {r.label: r for r in plot_prefix_counts.bucket_rows(stats)}
    regular = [p for i, p in enumerate(pieces) if i not in specials]
    # Every single byte is a regular token of a byte-level BPE: 1-byte tokens have no strict prefix,
    # every longer token has at least its first byte.
    assert rows['1'].tokens == 256 and rows['1'].share_with_prefix == 0.0
    assert all(r.share_with_prefix == 1.0 for label, r in rows.items() if label not in ('1', 'all'))
    two = [p for p in regular if len(p) == 2]
    assert rows['2'].tokens == len(two) and rows['2'].mean_prefixes == 1.0 and rows['2'].share_with_long_prefix == 0.0
    three = [p for p in regular if len(p) == 3]
    regular_set = set(regular)
    assert rows['3'].share_with_long_prefix == pytest.approx(sum(p[:2] in regular_set for p in three) / len(three))
    assert rows['3'].mean_prefixes == pytest.approx(sum(1 + (p[:2] in regular_set) for p in three) / len(three))
    assert rows['all'].tokens == 128_000 and sum(r.tokens for label, r in rows.items() if label != 'all') == 128_000
    assert rows['all'].share_with_prefix == pytest.approx((128_000 - 256) / 128_000)


def test_plot_prefix_counts_cli(tmp_path, capsys):
    out = tmp_path / 'counts.png'
    assert plot_prefix_counts.main(['--hf-id', 'llama3_packaged', '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'llama3_packaged: 128,256 ids, 256 special' in printed
    assert '| 1 | 256 | 0.0% | 0.0% | 0.00 |' in printed
    assert '| 2 | ' in printed and '| all | 128,000 | 99.8% |' in printed
    assert_png(out)


# -- metrics ------------------------------------------------------------------------------------

HELLASWAG = 'metrics/lm_eval/hellaswag/acc_norm'
SPELLING = 'metrics/lm_eval/charbench_spelling_single/acc'


def write_metrics(path: Path, rows: list[dict]):
    path.parent.mkdir(parents=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def run_rows(loss0: float, hs: list[float], with_spelling: bool) -> list[dict]:
    """Train rows every 10 batches (1024 tokens each), eval at 20 and 40, lm-eval at 20 and 40."""
    rows = []
    for b in (10, 20, 30, 40):
        rows.append({'batch': b, 'tokens': b * 1024, 'wall_time_s': b / 10, 'phase': 'train',
                     'loss/train/total': loss0 - b / 100, 'loss/train/nll': loss0 - b / 100 + 0.5})
        if b % 20 == 0:
            rows.append({'batch': b, 'tokens': b * 1024, 'wall_time_s': b / 10, 'phase': 'eval',
                         'metrics/eval/LanguageCrossEntropy': loss0 + 1 - b / 50})
            lm = {'batch': b, 'tokens': b * 1024, 'wall_time_s': b / 10, 'phase': 'lm_eval',
                  HELLASWAG: hs[b // 20 - 1], f'{HELLASWAG}_stderr': 0.01 * (b // 20)}
            if with_spelling:
                lm[SPELLING] = 0.25 + b / 1000
                lm[f'{SPELLING}_stderr'] = 0.02
            rows.append(lm)
    return rows


MODEL_100M = {'model_type': 'llama', 'hidden_size': 576, 'num_hidden_layers': 7, 'num_attention_heads': 9,
              'num_key_value_heads': 3, 'intermediate_size': 1536, 'vocab_size': 128256}
FAMILY_100M = 'd576-L7-h9kv3-ff1536-V128256'


def write_identity(folder: Path, model: dict, batch: int = 40):
    """An lm-eval records file (no items) that records the run's model config, as the callback writes."""
    settings = {'tasks': [], 'limit': None, 'num_fewshot': 0, 'fewshot_random_seed': 1234, 'autocast': None,
                'tokenizer_hash': 'abc', 'task_versions': {}, 'n_shot': {}, 'items': {}}
    header = {'format': 'prefix_composer.lm_eval_records', 'version': 1, 'batch': batch, 'tokens': batch * 1024,
              'run': run_identity(folder.name, 17, model, None), 'settings': settings, 'groups': {},
              'higher_is_better': {}, 'info': {}}
    write_records(str(folder / 'lm_eval' / f'ba{batch}.jsonl.gz'), Records(header, []))


@pytest.fixture
def runs_dir(tmp_path):
    runs = tmp_path / 'runs'
    write_metrics(runs / 'ce' / 'metrics.csv', run_rows(5.0, [0.26, 0.28], with_spelling=True))
    write_metrics(runs / 'prefix_unnorm_eps1' / 'metrics.csv', run_rows(6.0, [0.27, 0.31], with_spelling=False))
    for name in ('ce', 'prefix_unnorm_eps1'):
        write_identity(runs / name, MODEL_100M)
    (runs / 'summary').mkdir()  # an output folder with no metrics.csv is not a run
    return runs


def test_plot_metrics_writes_pngs_and_final_values(runs_dir, capsys):
    assert plot_metrics.main([str(runs_dir)]) == 0
    out = runs_dir / 'summary' / FAMILY_100M
    names = sorted(p.name for p in out.glob('*.png'))
    assert names == ['metrics_lm_eval_charbench_spelling_single.png', 'metrics_lm_eval_hellaswag.png',
                     'metrics_train_loss.png', 'metrics_val_nll.png']
    for name in names:
        assert_png(out / name)
    summary = (out / 'summary.md').read_text()
    assert summary.startswith(f'# Final values of 2 runs of family {FAMILY_100M} in {runs_dir}\n\n')
    assert summary.split('\n\n', 1)[1].strip() in capsys.readouterr().out
    lines = summary.splitlines()
    assert lines[2] == ('| variant | tokens | train objective | train NLL | validation NLL | hellaswag/acc_norm '
                        '| charbench_spelling_single/acc |')
    # final = last row with the metric: loss at batch 40, eval NLL at 40, lm-eval at 40 with its stderr
    assert lines[4] == '| ce | 40,960 | 4.6000 | 5.1000 | 5.2000 | 0.2800 ± 0.0200 | 0.2900 ± 0.0200 |'
    assert lines[5] == '| prefix_unnorm_eps1 | 40,960 | 5.6000 | 6.1000 | 6.2000 | 0.3100 ± 0.0200 | - |'


def test_series_takes_the_rows_that_have_the_metric_in_token_order(runs_dir):
    frame = plot_metrics.load_runs(str(runs_dir))[str(runs_dir / 'ce')].iloc[::-1]
    data = plot_metrics.series(frame, HELLASWAG)
    assert data['tokens'].tolist() == [20480, 40960]
    assert data['value'].tolist() == [0.26, 0.28] and data['stderr'].tolist() == [0.01, 0.02]
    assert plot_metrics.series(frame, 'metrics/eval/LanguageCrossEntropy')['value'].tolist() == pytest.approx([5.6, 5.2])


def test_stderr_column_names():
    assert plot_metrics.stderr_column(HELLASWAG) == f'{HELLASWAG}_stderr'
    assert plot_metrics.stderr_column('metrics/lm_eval/charbench/acc/strict') == 'metrics/lm_eval/charbench/acc_stderr/strict'


def test_plot_metrics_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match='No runs folder'):
        plot_metrics.main([str(tmp_path / 'nope')])
    with pytest.raises(FileNotFoundError, match='is neither a run folder'):
        plot_metrics.main([str(tmp_path)])
    (tmp_path / 'records_only' / 'lm_eval').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='No <variant>/metrics.csv'):
        plot_metrics.main([str(tmp_path)])
    (tmp_path / 'records_only' / 'lm_eval').rmdir()
    write_metrics(tmp_path / 'ce' / 'metrics.csv', [{'step': 1, 'loss': 2.0}])
    with pytest.raises(ValueError, match=r"lacks the columns \['batch', 'tokens', 'phase'\]"):
        plot_metrics.main([str(tmp_path)])


def test_plot_metrics_never_mixes_families(runs_dir, capsys):
    # a brief-000-sized run in the same runs folder, and a run without lm-eval records
    write_metrics(runs_dir / 'b000_ce' / 'metrics.csv', run_rows(7.0, [0.3, 0.4], with_spelling=False))
    write_identity(runs_dir / 'b000_ce', {**MODEL_100M, 'hidden_size': 1536, 'num_hidden_layers': 11,
                                          'num_attention_heads': 12, 'num_key_value_heads': 4, 'intermediate_size': 4096})
    write_metrics(runs_dir / 'no_records' / 'metrics.csv', run_rows(8.0, [0.2, 0.2], with_spelling=False))
    assert plot_metrics.main([str(runs_dir), '--out-dir', str(runs_dir / 'plots')]) == 0
    families = {p.name: p for p in (runs_dir / 'plots').iterdir()}
    assert sorted(families) == ['d1536-L11-h12kv4-ff4096-V128256', FAMILY_100M, 'unrecorded']
    for family, variants in [(FAMILY_100M, ['ce', 'prefix_unnorm_eps1']), ('d1536-L11-h12kv4-ff4096-V128256', ['b000_ce']),
                             ('unrecorded', ['no_records'])]:
        rows = (families[family] / 'summary.md').read_text().splitlines()[4:]
        assert [r.split(' | ')[0].lstrip('| ') for r in rows] == variants, family
        assert_png(families[family] / 'metrics_val_nll.png')
    assert 'Family unrecorded: no_records' in capsys.readouterr().out


def test_plot_metrics_default_folder_is_where_the_yamls_write():
    assert plot_metrics.yaml_run_root() == '/mnt/runs'


def test_plot_metrics_keeps_families_whose_short_labels_coincide(runs_dir):
    # same d/L/h/kv/ff/V, another rope_theta: a family of its own, its label naming the difference
    write_metrics(runs_dir / 'ce_rope' / 'metrics.csv', run_rows(7.0, [0.3, 0.4], with_spelling=False))
    write_identity(runs_dir / 'ce_rope', {**MODEL_100M, 'rope_theta': 10000.0})
    write_identity(runs_dir / 'ce', {**MODEL_100M, 'rope_theta': 500000.0})
    write_identity(runs_dir / 'prefix_unnorm_eps1', {**MODEL_100M, 'rope_theta': 500000.0})
    families = plot_metrics.write_plots(str(runs_dir), str(runs_dir / 'plots'))
    assert {family: names for family, (names, _, _) in families.items()} == {
        f'{FAMILY_100M}-rope_theta10000.0': 'ce_rope', f'{FAMILY_100M}-rope_theta500000.0': 'ce, prefix_unnorm_eps1'}
