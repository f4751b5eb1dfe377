"""How many prefix tokens does each vocabulary entry have? ``uv run python scripts/plot_prefix_counts.py``.

For every non-special id with byte string ``s``, ``|P(s)|`` is the number of non-special ids whose
bytes are a strict non-empty prefix of ``s`` (``prefix_composer.objectives.targets.strict_prefix_ids``, the
sets the prefix objectives smooth onto). Writes a PNG (histogram of |P(s)|; by byte length: share
of tokens with at least one prefix, share with a prefix of at least 2 bytes -- every single byte is
a token of a byte-level BPE, so 1-byte prefixes always exist -- and mean |P(s)|) and prints the
table by byte-length bucket.

``--hf-id`` takes a hub id (``meta-llama/Meta-Llama-3-8B``, needs HF_TOKEN), a local tokenizer
folder, or ``llama3_packaged`` (the offline Llama-3 tokenizer), built as training builds it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

from prefix_composer.analysis.plotting import markdown_table, plt, save_figure
from prefix_composer.objectives.targets import strict_prefix_ids
from prefix_composer.objectives.vocab import token_byte_strings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Byte-length buckets (inclusive ranges); the last one is open-ended.
BUCKETS = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 8), (9, 12), (13, 16), (17, None))


@dataclasses.dataclass(frozen=True)
class PrefixStats:
    """Per non-special token: byte length, |P(s)|, byte length of its longest prefix (0: none);
    plus the number of special ids left out."""

    byte_len: np.ndarray
    n_prefixes: np.ndarray
    longest_prefix: np.ndarray
    n_special: int


def prefix_stats(pieces: list[bytes], specials: set[int]) -> PrefixStats:
    prefixes = strict_prefix_ids(pieces, specials)
    regular = [i for i in range(len(pieces)) if i not in specials]
    return PrefixStats(
        byte_len=np.array([len(pieces[i]) for i in regular]),
        n_prefixes=np.array([len(prefixes[i]) for i in regular]),
        longest_prefix=np.array([len(pieces[prefixes[i][-1]]) if prefixes[i] else 0 for i in regular]),
        n_special=len(specials),
    )


def bucket_label(lo: int, hi: int | None) -> str:
    return f'{lo}+' if hi is None else (str(lo) if lo == hi else f'{lo}-{hi}')


@dataclasses.dataclass(frozen=True)
class BucketRow:
    label: str
    tokens: int
    share_with_prefix: float  # |P(s)| >= 1
    share_with_long_prefix: float  # some prefix of >= 2 bytes
    mean_prefixes: float  # mean |P(s)|


def bucket_rows(stats: PrefixStats) -> list[BucketRow]:
    """One row per non-empty byte-length bucket, then one for all regular tokens."""
    masks = [(bucket_label(lo, hi), (stats.byte_len >= lo) & (stats.byte_len <= (hi if hi is not None else np.inf)))
             for lo, hi in BUCKETS]
    masks.append(('all', np.ones_like(stats.byte_len, dtype=bool)))
    return [
        BucketRow(label, int(mask.sum()), float((stats.n_prefixes[mask] > 0).mean()),
                  float((stats.longest_prefix[mask] >= 2).mean()), float(stats.n_prefixes[mask].mean()))
        for label, mask in masks if mask.any()
    ]


def format_table(rows: list[BucketRow]) -> str:
    return markdown_table(
        ['bytes', 'tokens', 'with >= 1 prefix', 'with a prefix of >= 2 bytes', r'mean \|P(s)\|'],
        [(r.label, f'{r.tokens:,}', f'{r.share_with_prefix:.1%}', f'{r.share_with_long_prefix:.1%}',
          f'{r.mean_prefixes:.2f}') for r in rows],
    )


def plot(stats: PrefixStats, rows, title: str, path: str) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    counts = np.bincount(stats.n_prefixes)
    left.bar(np.arange(counts.size), counts, color='tab:blue')
    left.set_yscale('log')
    left.set_xlabel('|P(s)|: number of strict-prefix tokens')
    left.set_ylabel('tokens (log scale)')
    left.set_title(f'{title}: {stats.n_prefixes.size:,} regular tokens')

    buckets = rows[:-1]
    x = np.arange(len(buckets))
    right.bar(x - 0.2, [100 * r.share_with_prefix for r in buckets], 0.4, color='tab:orange',
              label='with >= 1 prefix (%)')
    right.bar(x + 0.2, [100 * r.share_with_long_prefix for r in buckets], 0.4, color='tab:purple',
              label='with a prefix of >= 2 bytes (%)')
    right.set_xticks(x, [r.label for r in buckets])
    right.set_xlabel('token length in bytes')
    right.set_ylabel('share of tokens (%)')
    right.set_ylim(0, 130)
    mean_axis = right.twinx()
    mean_axis.plot(x, [r.mean_prefixes for r in buckets], 'o-', color='tab:green', label='mean |P(s)|')
    mean_axis.set_ylabel('mean |P(s)|')
    mean_axis.set_ylim(bottom=0)
    handles = right.get_legend_handles_labels()[0] + mean_axis.get_legend_handles_labels()[0]
    right.legend(handles, [h.get_label() for h in handles], loc='upper left')
    right.set_title('by token byte length')
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--hf-id', default='llama3_packaged',
                        help='hub id, local tokenizer folder, or llama3_packaged (default)')
    parser.add_argument('--out', default=os.path.join(REPO, 'docs', 'prefix_counts.png'), help='PNG path')
    args = parser.parse_args(argv)

    from llmfoundry.utils.builders import build_tokenizer

    tokenizer = build_tokenizer(args.hf_id, {})
    pieces, specials = token_byte_strings(tokenizer)
    stats = prefix_stats(pieces, specials)
    rows = bucket_rows(stats)
    print(f'{args.hf_id}: {len(pieces):,} ids, {stats.n_special:,} special (never prefixes, left out).')
    print(format_table(rows))
    print(f'Wrote {plot(stats, rows, args.hf_id, args.out)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
