"""runai/submit_train.sh and runai/spinup_workspace.sh against a fake `runai` that records its argv."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUBMIT = REPO / 'runai' / 'submit_train.sh'
WORKSPACE = REPO / 'runai' / 'spinup_workspace.sh'
TOKEN = 'hf_TestTokenValue123'
SETTINGS = ('RUNAI_PROJECT', 'RUNAI_IMAGE', 'RUNAI_PVC', 'RUNAI_MOUNT', 'RUNAI_WORKDIR', 'RUNAI_GPUS', 'RUNAI_WS_GPUS',
            'RUNAI_EXTRA_ARGS', 'HF_TOKEN')


@pytest.fixture
def fake_runai(tmp_path):
    """A `runai` executable that writes its arguments, one per line, to <tmp>/argv."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    script = bin_dir / 'runai'
    script.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {tmp_path / "argv"}\necho submitted\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def run(script: Path, args: list[str], env_extra: dict[str, str], bin_dir: Path | None = None, cwd: Path = REPO):
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    if bin_dir is not None:
        env['PATH'] = f'{bin_dir}{os.pathsep}{env["PATH"]}'
    env.update(env_extra)
    return subprocess.run(['bash', str(script), *args], capture_output=True, text=True, env=env, cwd=cwd)


def recorded(fake_runai: Path) -> list[str]:
    return (fake_runai / 'argv').read_text().splitlines()


def test_submit_records_the_training_job(fake_runai):
    proc = run(SUBMIT, ['yamls/prefix_unnorm_eps1.yaml', 'max_duration=10ba', 'eval_interval=5ba'],
               {'HF_TOKEN': TOKEN, 'RUNAI_IMAGE': 'registry.example/pc:v1'}, fake_runai / 'bin')
    assert proc.returncode == 0, proc.stderr
    argv = recorded(fake_runai)
    assert argv[:3] == ['training', 'submit', 'prefix-unnorm-eps1']
    flags = argv[:argv.index('--command')]
    assert flags[flags.index('--gpu-devices-request') + 1] == '8'
    assert flags[flags.index('-i') + 1] == 'registry.example/pc:v1'
    assert flags[flags.index('-p') + 1] == 'prefix-composer'
    assert flags[flags.index('--existing-pvc') + 1] == 'claimname=prefix-composer-pvc,path=/mnt'
    assert flags[flags.index('--working-dir') + 1] == '/workspace/prefix-composer'
    assert flags[flags.index('-e') + 1] == f'HF_TOKEN={TOKEN}'  # reaches the container ...
    assert argv[argv.index('--command'):] == [
        '--command', '--', 'python', '-m', 'prefix_composer.runtime.launcher', '-n', '8', 'train.py', 'yamls/prefix_unnorm_eps1.yaml', 'max_duration=10ba',
        'eval_interval=5ba',
    ]
    assert TOKEN not in proc.stdout + proc.stderr  # ... but is never printed
    assert '"HF_TOKEN=$HF_TOKEN"' in proc.stderr and 'submitted' in proc.stdout


def test_settings_gpu_count_and_extra_flags(fake_runai):
    env = {'HF_TOKEN': TOKEN, 'RUNAI_GPUS': '4', 'RUNAI_PVC': 'lab-pvc', 'RUNAI_MOUNT': '/data', 'RUNAI_PROJECT': 'team-a',
           'RUNAI_EXTRA_ARGS': '--node-pools h100'}
    assert run(SUBMIT, ['yamls/b000_norm_tau0p05.yaml'], env, fake_runai / 'bin').returncode == 0
    argv = recorded(fake_runai)
    assert argv[2] == 'b000-norm-tau0p05'
    assert argv[argv.index('--gpu-devices-request') + 1] == '4' and argv[argv.index('-n') + 1] == '4'
    assert argv[argv.index('--existing-pvc') + 1] == 'claimname=lab-pvc,path=/data'
    assert argv[argv.index('-p') + 1] == 'team-a'
    assert argv[argv.index('--node-pools') + 1] == 'h100'


def test_dry_run_prints_the_command_without_the_token_and_runs_nothing(fake_runai):
    proc = run(SUBMIT, ['--dry-run', 'yamls/ce.yaml', 'variables.run_root=/mnt/my runs'], {'HF_TOKEN': TOKEN},
               fake_runai / 'bin')
    assert proc.returncode == 0, proc.stderr
    assert not (fake_runai / 'argv').exists()
    line = proc.stdout.strip()
    assert TOKEN not in proc.stdout + proc.stderr
    assert line == ('runai training submit ce -p prefix-composer -i prefix-composer:latest --gpu-devices-request 8 '
                    '--existing-pvc claimname=prefix-composer-pvc,path=/mnt --working-dir /workspace/prefix-composer '
                    '-e "HF_TOKEN=$HF_TOKEN" --command -- python -m prefix_composer.runtime.launcher -n 8 train.py yamls/ce.yaml '
                    'variables.run_root=/mnt/my\\ runs')


def test_run_name_override_names_the_job_and_absolute_yaml_paths_become_relative(fake_runai):
    proc = run(SUBMIT, [str(REPO / 'yamls' / 'label_smoothing.yaml'), 'run_name=LS_Retry.2'], {'HF_TOKEN': TOKEN},
               fake_runai / 'bin', cwd=fake_runai)
    assert proc.returncode == 0, proc.stderr
    argv = recorded(fake_runai)
    assert argv[2] == 'ls-retry-2'
    assert argv[-2:] == ['yamls/label_smoothing.yaml', 'run_name=LS_Retry.2']


def test_long_names_are_cut_to_63_kubernetes_safe_characters(fake_runai):
    name = 'B000_' + 'x' * 70
    assert run(SUBMIT, ['yamls/ce.yaml', f'run_name={name}'], {'HF_TOKEN': TOKEN}, fake_runai / 'bin').returncode == 0
    job = recorded(fake_runai)[2]
    assert job == ('b000-' + 'x' * 70)[:63] and len(job) == 63


@pytest.mark.parametrize('args, env, message', [
    (['yamls/missing.yaml'], {'HF_TOKEN': TOKEN}, 'no such YAML: yamls/missing.yaml'),
    (['yamls/ce.yaml'], {}, "tokenizer 'meta-llama/Meta-Llama-3-8B' comes from the Hugging Face hub (gated): export HF_TOKEN"),
    (['yamls/ce.yaml', 'max_duration'], {'HF_TOKEN': TOKEN}, "override 'max_duration' is not key=value"),
    (['--dryrun', 'yamls/ce.yaml'], {'HF_TOKEN': TOKEN}, 'unknown option --dryrun'),
    (['yamls/ce.yaml'], {'HF_TOKEN': TOKEN, 'RUNAI_GPUS': 'eight'}, "RUNAI_GPUS must be a positive integer, got 'eight'"),
    ([], {}, 'usage: runai/submit_train.sh'),
])
def test_bad_input_fails_clearly_before_submitting(fake_runai, args, env, message):
    proc = run(SUBMIT, args, env, fake_runai / 'bin')
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (fake_runai / 'argv').exists()


def test_offline_tokenizer_needs_no_token(fake_runai):
    proc = run(SUBMIT, ['yamls/ce.yaml', 'tokenizer.name=llama3_packaged'], {}, fake_runai / 'bin')
    assert proc.returncode == 0, proc.stderr
    assert not any(a.startswith('HF_TOKEN') for a in recorded(fake_runai))


def test_missing_runai_cli_is_a_clear_error(tmp_path):
    env = {'HF_TOKEN': TOKEN, 'PATH': '/usr/bin:/bin'}
    proc = subprocess.run(['bash', str(SUBMIT), 'yamls/ce.yaml'], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 2 and 'the runai CLI is not on PATH' in proc.stderr


def test_workspace_uses_the_same_image_and_volume(fake_runai):
    env = {'HF_TOKEN': TOKEN, 'RUNAI_IMAGE': 'registry.example/pc:v1', 'RUNAI_PVC': 'lab-pvc'}
    proc = run(WORKSPACE, ['Data_Prep'], env, fake_runai / 'bin')
    assert proc.returncode == 0, proc.stderr
    argv = recorded(fake_runai)
    assert argv[:3] == ['workspace', 'submit', 'data-prep']
    assert argv[argv.index('-i') + 1] == 'registry.example/pc:v1'
    assert argv[argv.index('--existing-pvc') + 1] == 'claimname=lab-pvc,path=/mnt'
    assert argv[argv.index('--gpu-devices-request') + 1] == '0'
    assert argv[argv.index('--command'):] == ['--command', '--', 'sleep', 'infinity']
    assert TOKEN not in proc.stdout + proc.stderr


def test_workspace_dry_run_default_name(fake_runai):
    proc = run(WORKSPACE, ['--dry-run'], {'USER': 'Ada', 'RUNAI_WS_GPUS': '1'}, fake_runai / 'bin')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('runai workspace submit ada-prefix-ws -p prefix-composer ')
    assert '--gpu-devices-request 1 ' in proc.stdout
    assert not (fake_runai / 'argv').exists()
