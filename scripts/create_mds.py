"""Tokenise the raw shards of a run into packed MDS train/val splits, as training will read them.

    uv run python scripts/create_mds.py --run-config yamls/prefix_unnorm_eps1.yaml [--workers N] [key=value ...]

Input variables.data.raw_dir (from download_fineweb_edu.py), output variables.data.mds_dir;
tokenizer, max_seq_len and val_tokens come from the same YAML that training reads. An existing
output from another config is refused unless --overwrite. See docs/data_pipeline.md.
"""

import argparse
import logging
import os

from prefix_composer.data.build_mds import DEFAULT_BATCH_DOCS, create_mds
from prefix_composer.data.run_config import load_data_run_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--run-config', required=True, help='training YAML (yamls/<variant>.yaml)')
    parser.add_argument('overrides', nargs='*', help='key=value overrides, as for train.py')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1, help='tokenizer processes (default: all cores)')
    parser.add_argument('--batch-docs', type=int, default=DEFAULT_BATCH_DOCS, help='documents per worker task')
    parser.add_argument('--compression', default=None, help='MDS shard compression, e.g. zstd (default: none)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing mds_dir built from another config')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')

    try:
        run = load_data_run_config(args.run_config, args.overrides)
        create_mds(run, workers=args.workers, batch_docs=args.batch_docs, overwrite=args.overwrite,
                   compression=args.compression, progress=not args.no_progress)
    except (ValueError, OSError) as e:  # bad input or config: the message, not a traceback
        raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
    main()
