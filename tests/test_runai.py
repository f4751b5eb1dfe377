"""runai/submit_train.sh and runai/spinup_workspace.sh against a fake `runai` that records its argv."""

from __future__ import annotations

import math
import os
import stat
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf as om

REPO = Path(__file__).resolve().parent.parent
SUBMIT = REPO / 'runai' / 'submit_train.sh'
WORKSPACE = REPO / 'runai' / 'spinup_workspace.sh'
TOKEN = 'hf_TestTokenValue123'
SETTINGS = ('RUNAI_PROJECT', 'RUNAI_IMAGE', 'RUNAI_PVC', 'RUNAI_MOUNT', 'RUNAI_WORKDIR', 'RUNAI_GPUS', 'RUNAI_WS_GPUS',
            'RUNAI_EXTRA_ARGS', 'RUNAI_HF_SECRET', 'RUNAI_HF_SECRET_KEY', 'RUNAI_HF_TOKEN_PLAINTEXT', 'HF_TOKEN')
GRACE_MARGIN_S = 60  # runai/submit_train.sh's margin beyond grace_seconds


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


def yaml_grace(name: str) -> int:
    """callbacks.graceful_preemption.grace_seconds of a YAML, read here without the project's loader."""
    return math.ceil(om.load(REPO / 'yamls' / name).callbacks.graceful_preemption.grace_seconds)


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
    assert flags[flags.index('--environment-secret') + 1] == 'HF_TOKEN=hf-token:token'  # the container's HF_TOKEN ...
    assert '-e' not in flags
    assert flags[flags.index('--termination-grace-period') + 1] == f'{yaml_grace("prefix_unnorm_eps1.yaml") + GRACE_MARGIN_S}s'
    assert argv[argv.index('--command'):] == [
        '--command', '--', 'python', '-m', 'prefix_composer.runtime.launcher', '-n', '8', 'train.py', 'yamls/prefix_unnorm_eps1.yaml', 'max_duration=10ba',
        'eval_interval=5ba',
    ]
    assert TOKEN not in '\n'.join(argv) + proc.stdout + proc.stderr  # ... comes from the secret: the local value goes nowhere
    assert 'submitted' in proc.stdout


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
    assert yaml_grace('ce.yaml') == 30
    assert line == ('runai training submit ce -p prefix-composer -i prefix-composer:latest --gpu-devices-request 8 '
                    '--existing-pvc claimname=prefix-composer-pvc,path=/mnt --working-dir /workspace/prefix-composer '
                    '--environment-secret HF_TOKEN=hf-token:token --termination-grace-period 90s '
                    '--command -- python -m prefix_composer.runtime.launcher -n 8 train.py yamls/ce.yaml '
                    'variables.run_root=/mnt/my\\ runs')


def test_dry_run_on_two_nodes_is_a_distributed_pytorch_workload(fake_runai):
    proc = run(SUBMIT, ['--dry-run', '--nodes', '2', 'yamls/ce.yaml'], {}, fake_runai / 'bin')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        'runai training pytorch submit ce -p prefix-composer -i prefix-composer:latest --gpu-devices-request 8 '
        '--existing-pvc claimname=prefix-composer-pvc,path=/mnt --working-dir /workspace/prefix-composer --workers 1 '
        '--environment-secret HF_TOKEN=hf-token:token --termination-grace-period 90s '
        '--command -- python -m prefix_composer.runtime.multinode -n 8 train.py yamls/ce.yaml')


def test_nodes_are_a_master_and_workers_with_the_gpus_of_each_pod(fake_runai):
    proc = run(SUBMIT, ['--nodes', '4', 'yamls/b000_ce.yaml', 'global_train_batch_size=32'], {'RUNAI_GPUS': '4'},
               fake_runai / 'bin')
    assert proc.returncode == 0, proc.stderr
    argv = recorded(fake_runai)
    assert argv[:4] == ['training', 'pytorch', 'submit', 'b000-ce']
    assert argv[argv.index('--workers') + 1] == '3'  # 4 pods: the master and 3 workers
    assert argv[argv.index('--gpu-devices-request') + 1] == '4'
    assert argv[argv.index('--command'):] == ['--command', '--', 'python', '-m', 'prefix_composer.runtime.multinode',
                                              '-n', '4', 'train.py', 'yamls/b000_ce.yaml', 'global_train_batch_size=32']


@pytest.mark.parametrize('override, grace', [
    ('callbacks.graceful_preemption.grace_seconds=120', 120),
    ('callbacks.graceful_preemption.grace_seconds=45.5', 46),  # whole seconds, rounded up
])
def test_termination_grace_period_follows_the_resolved_yaml(fake_runai, override, grace):
    proc = run(SUBMIT, ['yamls/b000_ce.yaml', override], {}, fake_runai / 'bin')
    assert proc.returncode == 0, proc.stderr
    argv = recorded(fake_runai)
    assert argv[argv.index('--termination-grace-period') + 1] == f'{grace + GRACE_MARGIN_S}s'


def test_secret_name_and_key_are_settings(fake_runai):
    env = {'RUNAI_HF_SECRET': 'lab-hf', 'RUNAI_HF_SECRET_KEY': 'hf_token', 'HF_TOKEN': TOKEN}
    proc = run(SUBMIT, ['yamls/ce.yaml'], env, fake_runai / 'bin')
    assert proc.returncode == 0, proc.stderr
    argv = recorded(fake_runai)
    assert argv[argv.index('--environment-secret') + 1] == 'HF_TOKEN=lab-hf:hf_token'
    assert TOKEN not in '\n'.join(argv) + proc.stdout + proc.stderr


@pytest.mark.parametrize('dry_run', [False, True])
def test_plaintext_token_only_on_opt_in_with_a_warning(fake_runai, dry_run):
    args = ['--dry-run'] * dry_run + ['yamls/ce.yaml']
    proc = run(SUBMIT, args, {'HF_TOKEN': TOKEN, 'RUNAI_HF_TOKEN_PLAINTEXT': '1'}, fake_runai / 'bin')
    assert proc.returncode == 0, proc.stderr
    assert 'warning: RUNAI_HF_TOKEN_PLAINTEXT=1: HF_TOKEN is stored in plain text in the workload spec' in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr  # never printed ...
    printed = proc.stdout if dry_run else proc.stderr
    assert '-e "HF_TOKEN=$HF_TOKEN"' in printed and '--environment-secret' not in printed
    if not dry_run:
        argv = recorded(fake_runai)
        assert argv[argv.index('-e') + 1] == f'HF_TOKEN={TOKEN}'  # ... but reaches the container


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
    (['yamls/ce.yaml'], {'RUNAI_HF_SECRET': ''},
     "tokenizer 'meta-llama/Meta-Llama-3-8B' comes from the Hugging Face hub (gated): set RUNAI_HF_SECRET"),
    (['yamls/ce.yaml'], {'RUNAI_HF_TOKEN_PLAINTEXT': '1'}, 'RUNAI_HF_TOKEN_PLAINTEXT=1 passes $HF_TOKEN, which is not set'),
    (['--nodes', '3', 'yamls/ce.yaml'], {},
     'global_train_batch_size=256 is not divisible by 3 node(s) x 8 GPUs = 24 processes'),
    (['--nodes', '0', 'yamls/ce.yaml'], {}, "--nodes must be a positive integer, got '0'"),
    (['yamls/ce.yaml', 'callbacks.graceful_preemption=null'], {},
     'yamls/ce.yaml has no callbacks.graceful_preemption.grace_seconds'),
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


def test_packaged_tokenizer_is_refused_it_is_not_in_the_image(fake_runai):
    """The Dockerfile installs without the dev group, so ``llama3_packaged`` would fail in the pod."""
    dockerfile = (REPO / 'Dockerfile').read_text()
    assert 'uv sync --frozen --extra mlflow --no-dev\n' in dockerfile
    for dry in ([], ['--dry-run']):
        proc = run(SUBMIT, [*dry, 'yamls/smoke_cpu.yaml'], {'HF_TOKEN': TOKEN}, fake_runai / 'bin')
        assert proc.returncode == 2
        assert 'tokenizer.name=llama3_packaged is the offline tokenizer' in proc.stderr
        assert 'tokenizer.name=meta-llama/Meta-Llama-3-8B' in proc.stderr and 'HF_TOKEN' in proc.stderr
        assert proc.stdout == '' and not (fake_runai / 'argv').exists()
    proc = run(SUBMIT, ['--dry-run', 'yamls/ce.yaml', 'tokenizer.name=llama3_packaged'], {'HF_TOKEN': TOKEN})
    assert proc.returncode == 2 and 'is the offline tokenizer' in proc.stderr


def test_local_tokenizer_folder_needs_no_token(fake_runai):
    proc = run(SUBMIT, ['yamls/ce.yaml', 'tokenizer.name=/mnt/tokenizers/llama3'], {}, fake_runai / 'bin')
    assert proc.returncode == 0, proc.stderr
    argv = recorded(fake_runai)
    assert not any('HF_TOKEN' in a for a in argv) and '--environment-secret' not in argv


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
    assert argv[argv.index('--environment-secret') + 1] == 'HF_TOKEN=hf-token:token'  # data preparation tokenizes
    assert TOKEN not in '\n'.join(argv) + proc.stdout + proc.stderr


def test_workspace_dry_run_default_name(fake_runai):
    proc = run(WORKSPACE, ['--dry-run'], {'USER': 'Ada', 'RUNAI_WS_GPUS': '1'}, fake_runai / 'bin')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('runai workspace submit ada-prefix-ws -p prefix-composer ')
    assert '--gpu-devices-request 1 ' in proc.stdout
    assert not (fake_runai / 'argv').exists()
