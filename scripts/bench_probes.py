"""Wall time of the spelling probes on the embedding shapes of the production configs (CPU).

    uv run python scripts/bench_probes.py [--configs yamls/base/brief001_100m.yaml yamls/base/brief000_500m.yaml]
        [--max-tokens 8192] [--folds 5] [--threads N]

For each config: its ``model.config`` vocab_size x hidden_size embedding, drawn as the model's
initialisation (normal, std ``initializer_range``), probed with ``callbacks.lm_eval.probes`` defaults
(or the flags) on the real Llama-3 vocabulary; prints the seconds of ``probe_records`` per config.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from omegaconf import OmegaConf

from prefix_composer.evaluation.records import run_identity
from prefix_composer.evaluation.spelling_probes import macro_accuracy, probe_records, probe_settings
from prefix_composer.objectives import token_byte_strings
from prefix_composer.tokenizer import PackagedLlama3Tokenizer

CONFIGS = ('yamls/base/brief001_100m.yaml', 'yamls/base/brief000_500m.yaml')


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--configs', nargs='+', default=list(CONFIGS))
    parser.add_argument('--max-tokens', type=int, default=None, help='default: the probes default')
    parser.add_argument('--folds', type=int, default=None, help='default: the probes default')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = probe_settings({k: v for k, v in (('max_tokens', args.max_tokens), ('folds', args.folds)) if v is not None})
    pieces, specials = token_byte_strings(PackagedLlama3Tokenizer())
    print(f'probe settings {settings}, {args.threads} torch threads')
    for path in args.configs:
        config = OmegaConf.to_container(OmegaConf.load(path).model.config, resolve=False)
        vocab, hidden, std = config['vocab_size'], config['hidden_size'], config.get('initializer_range', 0.02)
        embedding = torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(0)) * std
        start = time.perf_counter()
        records = probe_records(embedding, pieces, specials, settings, run_identity('bench', 0, config, None), 0, 0,
                                None, 'bench')
        seconds = time.perf_counter() - start
        print(f'{path}: embedding {vocab} x {hidden}: {seconds:.1f} s, macro accuracy {macro_accuracy(records.items)}',
              flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
