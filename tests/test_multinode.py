"""Runs past one node: the PyTorch operator's environment -> Composer's launcher (runtime/multinode.py),
and FSDP refused with the fused loss (runtime/launch.py).

The two-node test starts two "pods" on localhost, one CPU process each (gloo), through
``python -m prefix_composer.runtime.multinode`` with the variables a PyTorchJob sets, and checks
that they end with the same weights as one node running two processes. Each pod gets its own
/dev/shm (a private mount namespace), as separate hosts have: Streaming names its shared memory
per host, and two local leaders on one /dev/shm would take the same names.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from test_preemption import RUN_TIMEOUT_S, assert_equal_states

from prefix_composer.config import load_config
from prefix_composer.runtime import launch
from prefix_composer.runtime.multinode import CLEARED_VARS, node_signal_file_name, translate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCHES = 3
OVERRIDES = [
    'max_seq_len=32', 'global_train_batch_size=4', 'device_train_microbatch_size=2', 'device_eval_batch_size=2',
    f'max_duration={BATCHES}ba', f'save_interval={BATCHES}ba', f'eval_interval={BATCHES}ba', 'eval_subset_num_batches=1',
    'console_log_interval=1ba',
]
PRIVATE_SHM = ['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c',
               'mount -t tmpfs tmpfs /dev/shm && exec "$@"', 'sh']


# -- the entry script's translation ---------------------------------------------------------
def test_operator_environment_becomes_launcher_flags():
    env = {'MASTER_ADDR': 'job-master-0', 'MASTER_PORT': '23456', 'WORLD_SIZE': '3', 'RANK': '2', 'LOCAL_RANK': '5',
           'NODE_RANK': '7', 'LOCAL_WORLD_SIZE': '1', 'BASE_RANK': '4', 'GROUP_RANK': '2', 'HF_TOKEN': 'kept'}
    argv = translate(['-n', '8', 'train.py', 'yamls/ce.yaml', 'max_duration=10ba'], env)
    assert argv == ['-n', '8', '--world_size', '24', '--node_rank', '2', '--master_addr', 'job-master-0',
                    '--master_port', '23456', 'train.py', 'yamls/ce.yaml', 'max_duration=10ba']
    assert env == {'HF_TOKEN': 'kept'}  # what meant pods, and per-process values, are gone before the launcher reads env


@pytest.mark.parametrize('change, message', [
    ({'RANK': None}, 'RANK not set'),
    ({'MASTER_ADDR': '', 'MASTER_PORT': None}, 'MASTER_ADDR, MASTER_PORT not set'),
    ({'RANK': '2'}, "RANK='2' must be an integer in [0, 1]"),
    ({'WORLD_SIZE': 'two'}, "WORLD_SIZE='two' must be an integer in [1, 65535]"),
    ({'MASTER_PORT': '70000'}, "MASTER_PORT='70000' must be an integer in [1, 65535]"),
])
def test_bad_operator_environment_is_a_clear_error(change, message):
    env = {'MASTER_ADDR': '10.0.0.1', 'MASTER_PORT': '29500', 'WORLD_SIZE': '2', 'RANK': '1'}
    env.update(change)
    env = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(SystemExit, match='multinode: ' + message.replace('[', r'\[').replace(']', r'\]')):
        translate(['-n', '8', 'train.py', 'yamls/ce.yaml'], env)


def test_node_signal_file_name_carries_this_nodes_rank(monkeypatch):
    monkeypatch.setenv('NODE_RANK', '3')
    name = node_signal_file_name()
    assert name.startswith('._signal_file_node3_') and len(name) == len('._signal_file_node3_') + 6


# -- two pods on localhost == one node with two processes ------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def private_shm():
    probe = subprocess.run([*PRIVATE_SHM, 'true'], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f'no private /dev/shm for the simulated pods (unshare: {probe.stderr.strip()})')
    return PRIVATE_SHM


def start(private_shm, entry, nproc, run_root, mds, log, env):
    base = {k: v for k, v in os.environ.items() if k not in CLEARED_VARS}
    return subprocess.Popen(
        [*private_shm, sys.executable, '-m', entry, '-n', str(nproc), 'train.py', 'yamls/smoke_cpu.yaml', *OVERRIDES,
         f'variables.run_root={run_root}', f'variables.data.mds_dir={mds}'],
        cwd=REPO, env={**base, **env}, stdout=open(log, 'w'), stderr=subprocess.STDOUT, start_new_session=True)


def final_state(run_root):
    return torch.load(run_root / 'smoke_cpu' / 'checkpoints' / f'ep0-ba{BATCHES}-rank0.pt', map_location='cpu',
                      weights_only=False)


def train_losses(run_root) -> list[str]:
    with open(run_root / 'smoke_cpu' / 'metrics.csv', newline='') as f:
        return [row['loss/train/total'] for row in csv.DictReader(f) if row['phase'] == 'train']


def test_two_pods_train_as_one_node_with_two_processes(tmp_path, tiny_mds, private_shm):
    one_node, two_pods = tmp_path / 'one_node', tmp_path / 'two_pods'
    port = free_port()
    runs = {
        'one_node': start(private_shm, 'prefix_composer.runtime.launcher', 2, one_node, tiny_mds,
                          tmp_path / 'one_node.log', {}),
        **{f'pod{rank}': start(private_shm, 'prefix_composer.runtime.multinode', 1, two_pods, tiny_mds,
                               tmp_path / f'pod{rank}.log', {'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port),
                                                             'WORLD_SIZE': '2', 'RANK': str(rank)})
           for rank in (0, 1)},
    }
    try:
        codes = {name: proc.wait(timeout=RUN_TIMEOUT_S) for name, proc in runs.items()}
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    for name, code in codes.items():
        assert code == 0, f'{name}:\n' + (tmp_path / f'{name}.log').read_text()[-5000:]
    pod1_log = (tmp_path / 'pod1.log').read_text()
    assert 'rank1[' in pod1_log and 'rank0[' not in pod1_log  # pod 1 ran global rank 1 of 2

    got, want = final_state(two_pods), final_state(one_node)
    assert len(got['rng']) == len(want['rng']) == 2  # one RNG state per rank: a world of 2 in both runs
    assert assert_equal_states(got, want, ('model', 'optimizers')) > 20  # every weight and AdamW moment
    pods_data, node_data = got['state']['dataset_state']['train'], want['state']['dataset_state']['train']
    assert (pods_data['initial_physical_nodes'], node_data['initial_physical_nodes']) == (2, 1)  # Streaming saw 2 hosts
    assert pods_data['sample_in_epoch'] == node_data['sample_in_epoch'] == BATCHES * 4  # the YAML's global batch
    assert train_losses(two_pods) == train_losses(one_node) and len(train_losses(one_node)) == BATCHES


# -- FSDP with the fused loss stops before training -------------------------------------------
def smoke(*overrides):
    return load_config(os.path.join(REPO, 'yamls', 'smoke_cpu.yaml'), list(overrides))


def test_fsdp_with_the_fused_loss_stops_before_any_rank_meets(monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setattr(launch.dist, 'initialize_dist', lambda *args, **kwargs: pytest.fail('process group started'))
    with pytest.raises(ValueError, match='set model.loss_impl: logits'):  # so no Trainer and no batch either
        launch.main([os.path.join(REPO, 'yamls', 'smoke_cpu.yaml'), 'fsdp_config.sharding_strategy=FULL_SHARD'])


@pytest.mark.parametrize('world, overrides', [
    ('2', ['fsdp_config.sharding_strategy=FULL_SHARD', 'model.loss_impl=logits']),
    ('1', ['fsdp_config.sharding_strategy=FULL_SHARD']),  # llm-foundry drops fsdp_config on one rank
    ('2', []),  # DDP
])
def test_fsdp_guard_lets_the_other_setups_through(monkeypatch, world, overrides):
    monkeypatch.setenv('WORLD_SIZE', world)
    launch.check_parallelism(smoke(*overrides))
