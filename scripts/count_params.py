"""Print the parameter count of the model in each YAML: ``uv run python scripts/count_params.py [yamls...]``.

Defaults to the family bases in ``yamls/base/``. Counts come from
``prefix_composer.training.param_count.count_llama_parameters`` (meta-device model, tied embedding once).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

from omegaconf import OmegaConf as om

from prefix_composer.training.param_count import count_llama_parameters

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DIMS = ('hidden_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads', 'intermediate_size')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('yamls', nargs='*', default=sorted(glob.glob(os.path.join(REPO, 'yamls', 'base', '*.yaml'))))
    args = parser.parse_args(argv)
    print('| YAML | hidden | layers | heads | KV heads | FFN | total | embedding (tied) | non-embedding |')
    print('|---|---|---|---|---|---|---|---|---|')
    for path in args.yamls:
        config = om.to_container(om.load(path), resolve=True)['model']['config']
        count = count_llama_parameters(config)
        dims = ' | '.join(str(config[k]) for k in DIMS)
        print(f'| {os.path.relpath(path, REPO)} | {dims} | {count.total:,} | {count.embedding:,} | {count.non_embedding:,} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
