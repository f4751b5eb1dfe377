"""Write every experiment YAML from its family base: ``uv run python scripts/make_yamls.py [--check] [--seeds 0 1 2]``.

A family is one base file under ``yamls/base/`` plus a table of variants. A variant's YAML is the
base text with two edits: ``run_name`` set to the variant's name and the ``algorithms:`` block
replaced by the variant's ``prefix_smoothing`` objective (and ``stochastok``, if set). Comments and layout of the base are
kept, and a header records the provenance and the model's parameter count (computed, see
``prefix_composer.training.param_count``). So within a family only the objective, ``run_name`` and the
paths built from ``run_name`` can differ (tests/test_configs.py checks it).

Seed replicas: replica ``k`` of a variant also sets ``variables.global_seed`` to the base's seed
+ ``k``; the base derives both the model-init ``seed`` and the data order
(``train_loader.dataset.shuffle_seed``) from it. So replica ``k`` of every variant of a family
has the same initial weights and batches (runs are paired across objectives), and replicas
``j != k`` differ. Replica 0 is ``yamls/<variant>.yaml`` (run_name ``<variant>``); replica
``k >= 1`` is ``yamls/replicas/<variant>_seed<k>.yaml`` (run_name ``<variant>_seed<k>``, which
``compare_runs`` reads as variant ``<variant>``, seed from the run's records).

``--check`` writes nothing and exits 1 listing the committed YAMLs that are stale or missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys

from omegaconf import OmegaConf as om

from prefix_composer.config import replica_run_name
from prefix_composer.objectives import EpsSchedule, ObjectiveSpec
from prefix_composer.training.param_count import ParamCount, count_llama_parameters

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Variant:
    """A variant's name and its objective's parameters as ``ObjectiveSpec`` takes them (``None`` = omitted:
    the spec's defaults apply, and the YAML holds only the parameters the objective reads)."""

    name: str
    objective: str
    eps: float | EpsSchedule | None = None
    tau: float | None = None
    support: str | None = None
    expand_prop: float | None = None  # StochasTok split augmentation (algorithms.stochastok), None: off

    @property
    def spec(self) -> ObjectiveSpec:
        return ObjectiveSpec(self.objective, self.eps, self.tau, self.support)

    def algorithms(self) -> dict:
        blocks = {'prefix_smoothing': self.spec.to_config()}
        if self.expand_prop is not None:  # listed after prefix_smoothing: it splits first on AFTER_ events (FILO)
            blocks['stochastok'] = {'expand_prop': self.expand_prop}
        return blocks


@dataclasses.dataclass(frozen=True)
class Family:
    title: str
    summary: str
    base: str  # relative to the repo root
    variants: tuple[Variant, ...]


def number_tag(x: float) -> str:
    """0.05 -> '0p05', 0.1 -> '0p1', 1.0 -> '1', 2.0 -> '2' (file-name friendly)."""
    return f'{x:g}'.replace('.', 'p')


BRIEF000_TAUS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

BRIEF001_PREFIX_EPS = (0.1, 1.0)
# The longest strict prefix of the gold token takes eps: with scores len_i / tau over P(s) a prefix
# one byte shorter gets exp(-1/tau) of its weight (e^-20 at 0.05; tests/test_targets.py checks >= 0.999 of eps).
LONGEST_PREFIX_TAU = 0.05
# modded-nanogpt's prefix token prediction: an auxiliary CE on the longest strict prefix with weight lambda
# 0.25 for the first third of training, linearly to 0 over the second, in the convex form eps = lambda / (1 + lambda).
PTP_WEIGHT = 0.25
PTP_SCHEDULE = EpsSchedule('ptp', PTP_WEIGHT / (1 + PTP_WEIGHT), t1=(0.333, 'dur'), t2=(0.667, 'dur'))
# StochasTok (Sims et al. 2025): the paper's expand_prop, with ce and with the prefix objective of yamls/README.md.
STOCHASTOK_EXPAND_PROP = 0.1
DEFAULT_SEEDS = (0, 1, 2)
REPLICA_DIR = 'replicas'

FAMILIES = (
    Family(
        title='Brief 001',
        summary='~100M Llama-3-style model, 2B FineWeb-Edu sample-100BT tokens, 8-GPU single-node DDP.',
        base='yamls/base/brief001_100m.yaml',
        variants=(
            Variant('ce', 'ce'),
            Variant('label_smoothing', 'label_smoothing', 0.1),
            Variant('prefix_simple', 'prefix_simple', 0.1),
            *(Variant(f'prefix_norm_eps{number_tag(e)}', 'prefix_softmax_norm', e) for e in BRIEF001_PREFIX_EPS),
            *(Variant(f'prefix_unnorm_eps{number_tag(e)}', 'prefix_softmax', e) for e in BRIEF001_PREFIX_EPS),
            # modded-nanogpt PR #337: auxiliary cross-entropy on the longest proper byte prefix (yamls/README.md).
            Variant('prefix_longest_eps0p1', 'prefix_softmax', 0.1, LONGEST_PREFIX_TAU, 'strict'),
            # The same method with its schedule, and a constant-eps twin so the schedule's effect is separable.
            Variant('prefix_ptp', 'prefix_softmax', PTP_SCHEDULE, LONGEST_PREFIX_TAU, 'strict'),
            Variant('prefix_ptp_const', 'prefix_softmax', PTP_SCHEDULE.peak, LONGEST_PREFIX_TAU, 'strict'),
            # StochasTok split augmentation, with ce and with the prefix objective of yamls/README.md.
            Variant('stochastok_ce', 'ce', expand_prop=STOCHASTOK_EXPAND_PROP),
            Variant('stochastok_prefix_unnorm_eps1', 'prefix_softmax', 1.0, expand_prop=STOCHASTOK_EXPAND_PROP),
        ),
    ),
    Family(
        title='Brief 000',
        summary="~0.47B Llama-3-style model (brief 000's dims), 2B FineWeb-Edu sample-100BT tokens, 8 GPUs, tau sweep.",
        base='yamls/base/brief000_500m.yaml',
        variants=(
            Variant('b000_ce', 'ce'),
            *(Variant(f'b000_norm_tau{number_tag(t)}', 'prefix_softmax_norm', 1.0, t) for t in BRIEF000_TAUS),
            *(Variant(f'b000_unnorm_tau{number_tag(t)}', 'prefix_softmax', 1.0, t) for t in BRIEF000_TAUS),
        ),
    ),
)

LEADING_COMMENTS = re.compile(r'\A(?:#.*\n)*')
RUN_NAME_LINE = re.compile(r'^run_name: .*$', re.MULTILINE)
# ``variables.global_seed``: the one seed the base derives ``seed`` and ``shuffle_seed`` from.
GLOBAL_SEED_LINE = re.compile(r'^(  global_seed: )(\d+)(.*)$', re.MULTILINE)
# The top-level ``algorithms:`` key and its indented lines, up to the next blank line or top-level key.
ALGORITHMS_BLOCK = re.compile(r'^algorithms:\n(?:[ \t]+\S.*\n)+', re.MULTILINE)


def flow_yaml(value) -> str:
    """A config value as one line of YAML: a mapping in flow style (``{schedule: ptp, value: 0.2}``),
    floats as Python writes them (``1.0``, ``0.05``); also the value of a ``key=value`` override."""
    if isinstance(value, dict):
        return '{' + ', '.join(f'{k}: {flow_yaml(v)}' for k, v in value.items()) + '}'
    return repr(float(value)) if isinstance(value, float) else str(value)


def render_algorithms(variant: Variant) -> str:
    blocks = variant.algorithms()
    lines = ['algorithms:', *(line for name, block in blocks.items()
                              for line in (f'  {name}:', *(f'    {key}: {flow_yaml(value)}' for key, value in block.items())))]
    return '\n'.join(lines) + '\n'


def describe_objective(variant: Variant) -> str:
    """``objective prefix_softmax, eps 0.1, tau 1.0, support inclusive`` (the parameters it reads)."""
    return ', '.join(f'{key} {flow_yaml(value)}' for key, value in variant.algorithms()['prefix_smoothing'].items())


def replica_name(variant: Variant, k: int) -> str:
    """Run name of replica ``k`` (``config.replica_run_name``)."""
    return replica_run_name(variant.name, k)


def replica_file(variant: Variant, k: int) -> str:
    """Path of replica ``k``'s YAML relative to ``yamls/``."""
    name = f'{replica_name(variant, k)}.yaml'
    return name if k == 0 else os.path.join(REPLICA_DIR, name)


def base_seed(base_text: str) -> int:
    return int(GLOBAL_SEED_LINE.search(base_text).group(2))


def header(family: Family, variant: Variant, total: int, embedding: int, k: int = 0, seed: int = 0) -> str:
    replica = (f'# Replica {k}: variables.global_seed {seed} (model init and data order), paired with replica {k}\n'
               f'# of every {family.title} variant; replica 0 is yamls/{replica_file(variant, 0)}.\n') if k else ''
    return (
        f'# GENERATED by scripts/make_yamls.py from {family.base}; edit the base (or the variant table\n'
        f'# in scripts/make_yamls.py) and regenerate with `uv run python scripts/make_yamls.py`.\n'
        f'# {family.title}: {family.summary}\n'
        f'# Variant {variant.name}: {describe_objective(variant)}'
        + (f'; StochasTok expand_prop {variant.expand_prop!r}.\n' if variant.expand_prop is not None else '.\n') +
        f'# Model: {total:,} parameters = {embedding:,} tied embedding (counted once) + '
        f'{total - embedding:,} other\n'
        f'# (prefix_composer.training.param_count: LlamaForCausalLM on the meta device, unique parameters).\n'
        + replica
    )


def base_param_count(base_text: str) -> ParamCount:
    """Parameters of the family's model (variants share it: only run_name and algorithms change)."""
    return count_llama_parameters(om.to_container(om.create(base_text), resolve=True)['model']['config'])


def render_variant(family: Family, variant: Variant, base_text: str, count: ParamCount, k: int = 0) -> str:
    """The YAML text of replica ``k`` of one variant; checked to equal the base deep-merged with its
    changes (run_name, algorithms and, for k >= 1, variables.global_seed)."""
    if (len(RUN_NAME_LINE.findall(base_text)) != 1 or len(ALGORITHMS_BLOCK.findall(base_text)) != 1
            or len(GLOBAL_SEED_LINE.findall(base_text)) != 1):
        raise ValueError(f'{family.base} must have exactly one top-level `run_name:` line, one `algorithms:` block '
                         'and one `  global_seed: <int>` line under `variables:`.')
    name, seed = replica_name(variant, k), base_seed(base_text) + k
    body = LEADING_COMMENTS.sub('', base_text)  # the base's own header; the generated one replaces it
    body = RUN_NAME_LINE.sub(f'run_name: {name}', body)
    body = ALGORITHMS_BLOCK.sub(render_algorithms(variant), body)
    if k:
        body = GLOBAL_SEED_LINE.sub(lambda m: f'{m.group(1)}{seed}{m.group(3)}', body)

    base_cfg = om.create(base_text)
    expected = om.merge(base_cfg, {'run_name': name, 'variables': {'global_seed': seed}})
    expected.algorithms = variant.algorithms()
    if om.create(body) != expected:
        raise ValueError(f'Editing {family.base} for {name} changed more than run_name, algorithms and the seed.')
    return header(family, variant, count.total, count.embedding, k, seed) + body


def generate(seeds: tuple[int, ...] = DEFAULT_SEEDS) -> dict[str, str]:
    """{path relative to yamls/: text} of replicas ``seeds`` of every variant of every family."""
    if not seeds or any(k < 0 for k in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f'--seeds must be distinct replica numbers >= 0, got {list(seeds)}.')
    out: dict[str, str] = {}
    for family in FAMILIES:
        with open(os.path.join(REPO, family.base)) as f:
            base_text = f.read()
        count = base_param_count(base_text)
        for variant in family.variants:
            for k in seeds:
                name = replica_file(variant, k)
                if name in out:
                    raise ValueError(f'Two variants are named {variant.name}.')
                out[name] = render_variant(family, variant, base_text, count, k)
    return out


def stale_files(files: dict[str, str], out_dir: str) -> list[str]:
    stale = []
    for name, text in files.items():
        path = os.path.join(out_dir, name)
        if not os.path.exists(path):
            stale.append(f'{path} (missing)')
            continue
        with open(path) as f:
            if f.read() != text:
                stale.append(f'{path} (differs)')
    return stale


def report_check(stale: list[str], script: str, up_to_date: str) -> int:
    """``--check``'s output and exit status: each stale item and how to regenerate (1), else ``up_to_date`` (0)."""
    for line in stale:
        print(f'stale: {line}')
    if stale:
        print(f'Regenerate with `uv run python scripts/{script}`.')
        return 1
    print(up_to_date)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out-dir', default=os.path.join(REPO, 'yamls'), help='where the variant YAMLs go (default: yamls/)')
    parser.add_argument('--check', action='store_true', help='write nothing; exit 1 if a YAML in --out-dir is stale or missing')
    parser.add_argument('--seeds', type=int, nargs='+', default=list(DEFAULT_SEEDS), metavar='K',
                        help='seed replicas to write (default: 0 1 2); replica 0 is yamls/<variant>.yaml')
    args = parser.parse_args(argv)

    try:
        files = generate(tuple(args.seeds))
    except ValueError as e:
        parser.error(str(e))
    if args.check:
        return report_check(stale_files(files, args.out_dir), 'make_yamls.py', f'{len(files)} YAMLs up to date in {args.out_dir}.')
    for name, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(args.out_dir, name)), exist_ok=True)
        with open(os.path.join(args.out_dir, name), 'w') as f:
            f.write(text)
    print(f'Wrote {len(files)} YAMLs to {args.out_dir}.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
