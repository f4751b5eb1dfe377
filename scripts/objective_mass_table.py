"""Per-variant table of what each objective asks for on the Llama-3 vocabulary, written into yamls/README.md.

    uv run python scripts/objective_mass_table.py            # rewrite the block in yamls/README.md
    uv run python scripts/objective_mass_table.py --check    # exit 1 if the committed block is stale
    uv run python scripts/objective_mass_table.py --check --variants ce label_smoothing   # only these rows

For every variant of ``make_yamls.FAMILIES`` the ``algorithms.prefix_smoothing`` block of its
committed ``yamls/<variant>.yaml`` is built into its target table on the packaged Llama-3
vocabulary (``llama3_packaged``), as ``PrefixSmoothing`` builds it at ``INIT``, and
``objectives.stats.per_id_stats`` gives every gold id's off-gold mass and target entropy. The
means are uniform over the token ids (no token-frequency weighting: the repo holds no natural
text to weight by). Rows whose mean off-gold mass is below ``PLAIN_CE_OFF_GOLD`` (the threshold
of the algorithm's warning) are marked: on this vocabulary they train plain cross-entropy. A
variant whose eps is a schedule is shown at the schedule's maximum eps (the table the algorithm
builds; every schedule starts there), and its note says so.
"""

from __future__ import annotations

import argparse
import os
import sys

from omegaconf import OmegaConf as om

from make_yamls import FAMILIES, REPO, report_check
from prefix_composer.objectives import EpsSchedule, ObjectiveSpec, build_target_table, token_byte_strings
from prefix_composer.objectives.stats import PLAIN_CE_OFF_GOLD, per_id_stats
from prefix_composer.tokenizer import PackagedLlama3Tokenizer
from prefix_composer.training.eps_schedule import objective_spec

README = os.path.join(REPO, 'yamls', 'README.md')
BEGIN = '<!-- begin objective_mass_table (scripts/objective_mass_table.py) -->'
END = '<!-- end objective_mass_table -->'
HEADER = (
    '| variant | objective | eps | tau | support | mean off-gold mass | max off-gold mass | mean target entropy (nats) '
    '| ids with gold weight 1.0 (float32) | note |',
    '|---|---|---|---|---|---|---|---|---|---|',
)
PLAIN_CE = f'plain CE on this vocabulary (< {PLAIN_CE_OFF_GOLD:g})'


def variant_names() -> list[str]:
    return [v.name for family in FAMILIES for v in family.variants]


def variant_spec(name: str) -> ObjectiveSpec:
    """The objective of the committed ``yamls/<name>.yaml``."""
    block = om.load(os.path.join(REPO, 'yamls', f'{name}.yaml')).algorithms.prefix_smoothing
    return objective_spec(**om.to_container(block))


def stochastok_note(name: str) -> str:
    """The note of a variant that also splits its inputs (``algorithms.stochastok``): its targets are its objective's."""
    block = om.select(om.load(os.path.join(REPO, 'yamls', f'{name}.yaml')), 'algorithms.stochastok')
    return '' if block is None else (f'+ StochasTok expand_prop {block.expand_prop:g}: splits the inputs; the targets '
                                     f'are those of its objective')


def table_row(name: str, pieces: list[bytes], specials: set[int]) -> str:
    spec = variant_spec(name)
    table = build_target_table(pieces, specials, spec)
    off_gold, entropy = per_id_stats(table)
    gold_is_one = (table.weights[:, 0] == 1.0) & (table.uniform_mass == 0.0)  # column 0 is the gold id itself
    mass = float(off_gold.mean())
    notes = [PLAIN_CE] if spec.objective != 'ce' and mass < PLAIN_CE_OFF_GOLD else []
    if isinstance(spec.eps, EpsSchedule):
        notes.append(f'eps schedule {spec.eps.schedule}: masses at its maximum eps {spec.peak_eps:g}')
    note = '; '.join(filter(None, [*notes, stochastok_note(name)]))
    cells = [f'`{name}`', f'`{spec.objective}`', f'{spec.peak_eps:g}', f'{spec.tau:g}', spec.support, f'{mass:.4g}',
             f'{float(off_gold.max()):.4g}', f'{float(entropy.mean()):.4g}',
             f'{int(gold_is_one.sum()):,} / {len(gold_is_one):,} ({float(gold_is_one.double().mean()):.4f})', note]
    return '| ' + ' | '.join(cells) + ' |'


def rows(names: list[str]) -> dict[str, str]:
    pieces, specials = token_byte_strings(PackagedLlama3Tokenizer())
    return {name: table_row(name, pieces, specials) for name in names}


def split_readme(text: str, path: str) -> tuple[str, list[str], str]:
    """(text before the block, the block's lines, text after it) of the file ``path`` holding ``text``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f'{path} needs exactly one {BEGIN!r} ... {END!r} block.')
    before, rest = text.split(BEGIN + '\n', 1)
    block, after = rest.split(END, 1)
    return before, block.splitlines(), after


def stale_rows(block: list[str], expected: dict[str, str]) -> list[str]:
    """What in ``block`` differs from ``expected`` (the rows of some variants), and missing or unknown rows."""
    problems = [] if tuple(block[:2]) == HEADER else ['table header']
    committed = {line.split('`')[1]: line for line in block[2:] if line.startswith('| `')}
    unknown = sorted(set(committed) - set(variant_names()))
    problems += [f'{name} (no such variant)' for name in unknown]
    problems += [f'{name} (missing)' for name in variant_names() if name not in committed]
    problems += [f'{name} (differs)' for name, line in expected.items() if name in committed and committed[name] != line]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true', help='write nothing; exit 1 if the block in --readme is stale')
    parser.add_argument('--variants', nargs='+', metavar='NAME', help='with --check: recompute only these rows')
    parser.add_argument('--readme', default=README, help='the file holding the block (default: yamls/README.md)')
    args = parser.parse_args(argv)
    names = args.variants or variant_names()
    if args.variants and not args.check:
        parser.error('--variants needs --check (the block is always written whole)')
    unknown = sorted(set(names) - set(variant_names()))
    if unknown:
        parser.error(f'unknown variants {unknown}; they are: {" ".join(variant_names())}')
    with open(args.readme) as f:
        before, block, after = split_readme(f.read(), args.readme)
    expected = rows(names)
    if args.check:
        return report_check(stale_rows(block, expected), 'objective_mass_table.py',
                            f'{len(expected)} rows of the objective mass table up to date in {args.readme}.')
    with open(args.readme, 'w') as f:
        f.write(before + BEGIN + '\n' + '\n'.join([*HEADER, *expected.values()]) + '\n' + END + after)
    print(f'Wrote {len(expected)} rows to {args.readme}.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
