"""Download FineWeb-Edu sample-100BT into raw parquet shards, sized for a run; resumable.

    uv run python scripts/download_fineweb_edu.py --run-config yamls/prefix_unnorm_eps1.yaml [key=value ...]
    uv run python scripts/download_fineweb_edu.py --run-config yamls/smoke_cpu.yaml \
        --data-files docs_0.jsonl --data-files docs_1.jsonl variables.data.raw_dir=./data/demo/raw ...

Source, destination (variables.data.raw_dir) and token budget (variables.data.train_tokens +
val_tokens) come from the training YAML; flags override the budget. Rerunning the same command
after an interruption continues where it stopped. See docs/data_pipeline.md.
"""

import argparse
import logging

from prefix_composer.data.download import (
    DEFAULT_CHARS_PER_TOKEN,
    DEFAULT_DOCS_PER_SHARD,
    DEFAULT_MARGIN,
    describe_source,
    download,
)
from prefix_composer.data.run_config import load_data_run_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--run-config', required=True, help='training YAML (yamls/<variant>.yaml)')
    parser.add_argument('overrides', nargs='*', help='key=value overrides, as for train.py')
    parser.add_argument('--data-files', action='append', default=[], metavar='FILE',
                        help='a local .jsonl[.gz|.zst] or .parquet file with a `text` field, read instead of the hub '
                             '(repeat the flag for several files; they are read in the order given)')
    parser.add_argument('--train-tokens', type=int, help='override variables.data.train_tokens')
    parser.add_argument('--val-tokens', type=int, help='override variables.data.val_tokens')
    parser.add_argument('--margin', type=float, default=DEFAULT_MARGIN,
                        help=f'download (train+val) x margin estimated tokens (default {DEFAULT_MARGIN})')
    parser.add_argument('--chars-per-token', type=float, default=DEFAULT_CHARS_PER_TOKEN,
                        help=f'token estimate = ASCII chars / this + 1 per document (default {DEFAULT_CHARS_PER_TOKEN})')
    parser.add_argument('--docs-per-shard', type=int, default=DEFAULT_DOCS_PER_SHARD)
    parser.add_argument('--overwrite', action='store_true', help='discard an existing download in raw_dir')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')

    try:
        run = load_data_run_config(args.run_config, args.overrides)
        download(
            run.raw_dir,
            describe_source(run.hf_dataset, run.hf_config, args.data_files),
            run.train_tokens if args.train_tokens is None else args.train_tokens,
            run.val_tokens if args.val_tokens is None else args.val_tokens,
            chars_per_token=args.chars_per_token,
            margin=args.margin,
            docs_per_shard=args.docs_per_shard,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (ValueError, OSError) as e:  # bad input or config: the message, not a traceback
        raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
    main()
