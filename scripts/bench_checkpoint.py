"""Time writing a checkpoint of each family's model: ``uv run python scripts/bench_checkpoint.py [yamls...] [--dir D]``.

The bulk of a Composer checkpoint is the model's fp32 weights and DecoupledAdamW's two moments
(3 copies of the parameters); this builds the YAML's ``LlamaForCausalLM``, fills the optimizer's
state with one step, and times ``torch.save`` of both plus ``fsync`` (as the atomic saver does)
into a file in ``--dir``, then deletes it. Rank 0 alone writes the (monolithic) checkpoint, so
the time does not depend on the GPU count. Prints one Markdown row per YAML.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

import torch
from composer.optim import DecoupledAdamW
from omegaconf import OmegaConf as om
from transformers import LlamaConfig, LlamaForCausalLM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkpoint_state(yaml_path: str) -> tuple[int, dict]:
    """(parameter count, {'model': weights, 'optimizers': DecoupledAdamW state}) of the YAML's model."""
    cfg = om.to_container(om.load(yaml_path), resolve=True)
    model = LlamaForCausalLM(LlamaConfig(**cfg['model']['config']))
    optimizer = DecoupledAdamW(model.parameters(), lr=float(cfg['optimizer']['lr']))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # allocates exp_avg and exp_avg_sq for every parameter
    params = sum(p.numel() for p in model.parameters())
    return params, {'model': model.state_dict(), 'optimizers': {'DecoupledAdamW': optimizer.state_dict()}}


def timed_save(state: dict, folder: str) -> tuple[int, float]:
    """(bytes, seconds) of torch.save + fsync of ``state`` into a temporary file in ``folder``."""
    with tempfile.NamedTemporaryFile(dir=folder, suffix='.pt') as f:
        start = time.perf_counter()
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
        return os.path.getsize(f.name), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('yamls', nargs='*', default=sorted(glob.glob(os.path.join(REPO, 'yamls', 'base', '*.yaml'))))
    parser.add_argument('--dir', default=tempfile.gettempdir(), help='where to write (default: the temp dir)')
    args = parser.parse_args(argv)
    print(f'| YAML | parameters | checkpoint | write + fsync to {args.dir} | throughput |')
    print('|---|---|---|---|---|')
    for path in args.yamls:
        params, state = checkpoint_state(path)
        size, seconds = timed_save(state, args.dir)
        del state
        print(f'| {os.path.relpath(path, REPO)} | {params / 1e6:,.0f} M | {size / 1e9:.2f} GB | {seconds:.1f} s | '
              f'{size / 1e6 / seconds:,.0f} MB/s |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
