"""scripts/demo.py's plan of runs, cheaply (no training): paired seed replicas of ce and a prefix
objective, each an override set that resolves to the YAML's training config with that objective."""

from __future__ import annotations

import os
import sys

import pytest
from omegaconf import OmegaConf

from lm_eval_helpers import ROOT
from prefix_composer.config import load_config
from prefix_composer.training.eps_schedule import objective_spec

sys.path.insert(0, os.path.join(ROOT, 'scripts'))  # as `python scripts/demo.py` has it: demo imports compare_runs, plot_metrics
import demo  # noqa: E402


def test_plan_pairs_replicas_across_objectives_and_resolves_to_the_yaml_configs():
    runs = demo.plan_runs(seeds=2, batches=6, limit=3, extra=['python_log_level=warning'])
    assert [(r.variant, r.replica) for r in runs] == [('ce', 0), ('ce', 1), ('prefix_unnorm_eps1', 0), ('prefix_unnorm_eps1', 1)]
    base_seed = OmegaConf.load(os.path.join(ROOT, demo.YAML)).variables.global_seed
    folders = set()
    for run in runs:
        cfg = load_config(os.path.join(ROOT, demo.YAML), run.overrides)
        variant_cfg = OmegaConf.load(os.path.join(ROOT, 'yamls', f'{run.variant}.yaml'))
        assert objective_spec(**cfg.algorithms.prefix_smoothing) == objective_spec(**variant_cfg.algorithms.prefix_smoothing)
        assert cfg.run_name == run.name == (run.variant if run.replica == 0 else f'{run.variant}_seed{run.replica}')
        assert cfg.seed == cfg.train_loader.dataset.shuffle_seed == base_seed + run.replica == run.seed
        assert cfg.max_duration == '6ba' and cfg.callbacks.lm_eval.limit == 3 and list(cfg.callbacks.lm_eval.tasks) == ['charbench']
        assert cfg.callbacks.lm_eval.interval == '3ba' and cfg.python_log_level == 'warning'
        folders.add(os.path.normpath(os.path.dirname(cfg.save_folder)))
        assert os.path.normpath(os.path.dirname(cfg.save_folder)) == os.path.normpath(run.folder)
    assert len(folders) == 4
    assert runs[0].seed == runs[2].seed != runs[1].seed == runs[3].seed  # replica k shares its seed across objectives


def test_variants_choose_the_objectives_a_schedule_included():
    """``--variants ce prefix_ptp``: yamls/smoke_cpu.yaml's prefix block is replaced key by key, so ``ce``
    keeps no eps of it and ``prefix_ptp`` gets its schedule (dur: over the demo's batches)."""
    runs = demo.plan_runs(seeds=1, batches=6, limit=3, extra=[], variants=('ce', 'prefix_ptp'))
    specs = [objective_spec(**load_config(os.path.join(ROOT, demo.YAML), run.overrides).algorithms.prefix_smoothing)
             for run in runs]
    assert [s.objective for s in specs] == ['ce', 'prefix_softmax'] and specs[0].peak_eps == 0.0
    assert specs[1].eps.to_config() == {'schedule': 'ptp', 'value': 0.2, 't1': '0.333dur', 't2': '0.667dur'}
    assert (specs[1].tau, specs[1].support) == (0.05, 'strict')
    with pytest.raises(SystemExit):
        demo.main(['--dry-run', '--variants', 'ce', 'no_such_variant'])
    with pytest.raises(ValueError, match='--variants must name at least two distinct variants'):
        demo.plan_runs(seeds=1, batches=6, limit=3, extra=[], variants=('ce',))


def test_dry_run_prints_one_command_per_run_and_bad_options_fail(capsys):
    assert demo.main(['--dry-run', '--seeds', '3']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and all(' train.py yamls/smoke_cpu.yaml run_name=' in line for line in lines)
    with pytest.raises(SystemExit) as refused:
        demo.main(['--bogus', '2'])
    assert refused.value.code == 2
    assert ("error: unrecognized arguments ['--bogus', '2']: options are listed by --help, overrides are key=value"
            in capsys.readouterr().err)
    with pytest.raises(ValueError, match='--seeds must be >= 1'):
        demo.main(['--dry-run', '--seeds', '0'])


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as done:
        demo.main(['--help'])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith('usage: ')
    assert [o for o in ('--variants', '--seeds', '--batches', '--limit', '--parallel', '--dry-run') if f'  {o}' not in out] == []
