"""Entry point of each pod of a multi-node run: the PyTorch operator's environment -> Composer's launcher.

    python -m prefix_composer.runtime.multinode -n GPUS_PER_POD train.py yamls/<variant>.yaml [key=value ...]

A Kubeflow PyTorchJob (what ``runai training pytorch submit`` creates) sets in every pod
``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE`` = number of pods and ``RANK`` = pod index (master
0). Composer's launcher reads ``WORLD_SIZE`` as the number of *processes*, and its ranks read
``RANK``/``WORLD_SIZE`` as per-process values, so these are translated into explicit launcher flags
(``--world_size pods*GPUS_PER_POD --node_rank RANK --master_addr --master_port``) and removed from
the environment, with the other per-process variables a launcher or torch would otherwise pick up.
The launcher then runs with SIGTERM forwarded to the ranks, as on one node (docs/preemption.md).

``node_signal_file_name`` is for the ranks (installed by ``runtime.launch.main``): Composer 0.32.1
names the file its ranks wait on in ``save_folder`` after rank 0's node, so on a volume that all
pods share every node's local rank 0 removes the same file and all but the first crash
(llm-foundry#1736, unfixed in Composer).
"""

from __future__ import annotations

import argparse
import os
import random
import string
import sys
from typing import Mapping, MutableMapping, Optional, Sequence

from composer.utils import dist

from prefix_composer.runtime.launcher import main as launcher_main

# Set by the operator, meaning pods; the launcher sets the per-process values for each rank.
OPERATOR_VARS = ('MASTER_ADDR', 'MASTER_PORT', 'WORLD_SIZE', 'RANK')
# Read by Composer's launcher (LOCAL_WORLD_SIZE, NODE_RANK, BASE_RANK) or by torch/Composer in the ranks.
CLEARED_VARS = OPERATOR_VARS + ('LOCAL_WORLD_SIZE', 'NODE_RANK', 'BASE_RANK', 'LOCAL_RANK', 'GROUP_RANK')


def _int(env: Mapping[str, str], name: str, low: int, high: int) -> int:
    value = env[name]
    if not value.strip().isdigit() or not low <= int(value) <= high:
        raise SystemExit(f'multinode: {name}={value!r} must be an integer in [{low}, {high}].')
    return int(value)


def launcher_argv(nproc: int, env: Mapping[str, str]) -> list[str]:
    """Composer launcher flags for this pod from the operator's variables (validated)."""
    missing = [name for name in OPERATOR_VARS if not env.get(name)]
    if missing:
        raise SystemExit(f'multinode: {", ".join(missing)} not set; this entry point expects the PyTorch operator\'s '
                         'environment (MASTER_ADDR, MASTER_PORT, WORLD_SIZE = pods, RANK = pod index).')
    if nproc < 1:
        raise SystemExit(f'multinode: -n must be >= 1 (processes per pod), got {nproc}.')
    pods = _int(env, 'WORLD_SIZE', 1, 65535)
    pod = _int(env, 'RANK', 0, pods - 1)
    port = _int(env, 'MASTER_PORT', 1, 65535)
    return ['-n', str(nproc), '--world_size', str(pods * nproc), '--node_rank', str(pod),
            '--master_addr', env['MASTER_ADDR'], '--master_port', str(port)]


def translate(argv: Sequence[str], env: MutableMapping[str, str]) -> list[str]:
    """``-n N script [args]`` plus the operator's ``env`` -> the launcher's argv; clears ``CLEARED_VARS`` from ``env``."""
    parser = argparse.ArgumentParser(prog='python -m prefix_composer.runtime.multinode', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-n', '--nproc', type=int, required=True, help='processes (GPUs) per pod')
    parser.add_argument('training_script')
    parser.add_argument('training_script_args', nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    flags = launcher_argv(args.nproc, env)
    for name in CLEARED_VARS:
        env.pop(name, None)
    return [*flags, args.training_script, *args.training_script_args]


def node_signal_file_name(rng: Optional[random.Random] = None) -> str:
    """``composer.utils.dist.get_node_signal_file_name`` with this node's rank in the name: rank 0's
    random part (the same on all ranks), ``node{NODE_RANK}`` of the caller (distinct per node)."""
    token = [''.join((rng or random.Random()).choices(string.ascii_letters + string.digits, k=6))]
    dist.broadcast_object_list(token, src=0)
    return f'._signal_file_node{dist.get_node_rank()}_{token[0]}'


def install_node_signal_file_name() -> None:
    """Make Composer and llm-foundry (which call it as ``dist.get_node_signal_file_name``) use ours."""
    dist.get_node_signal_file_name = node_signal_file_name


def main() -> int:
    sys.argv[1:] = translate(sys.argv[1:], os.environ)
    return launcher_main()


if __name__ == '__main__':
    sys.exit(main())
