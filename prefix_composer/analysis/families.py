"""Model families: runs grouped by architecture, checked, and placed at one evaluation.

* A **family** is the set of runs with the same model architecture (``run.model``, never the
  folder name): brief 001's ~100M and brief 000's ~500M runs are never mixed. Its variants must
  each train one objective, one run per seed. Replica k of two variants is the pair of runs with
  the same seed.
* A family is compared at the last lm-eval evaluation (tokens) that all its runs have records
  for, or at ``at_tokens``. A run that trained past a later evaluation of the others but lacks
  its records there (a deleted damaged file) is refused, naming it: the family is compared at an
  earlier evaluation only when ``at_tokens`` asks for it.
* Every record kind (``records.RECORD_KINDS``) present at those tokens is compared; a kind that
  some runs lack there is left out with a note naming them. All records of one kind there must
  have equal ``settings``, else the report is refused naming the first differences.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Callable, Iterable, Optional, TypeVar

from prefix_composer.analysis.runs import Run
from prefix_composer.evaluation.records import RECORD_KINDS, RECORDS_SUBDIR, read_header, settings_differences

T = TypeVar('T')


@dataclasses.dataclass
class Family:
    """Runs of one model architecture, compared at ``tokens`` against ``baseline``."""

    label: str
    model: dict[str, Any]
    runs: list[Run]
    baseline: str
    tokens: int
    batch: int
    header: dict[str, Any]                 # lm-eval records header of the baseline's first run at ``tokens``
    kinds: dict[str, dict[str, dict[str, Any]]]  # record kind -> run name -> its header at ``tokens``
    notes: list[str]


def family_label(model: dict[str, Any]) -> str:
    """``d576-L7-h9kv3-ff1536-V128256``: the architecture in one token (other keys are in the report)."""
    return (f"d{model.get('hidden_size')}-L{model.get('num_hidden_layers')}-h{model.get('num_attention_heads')}"
            f"kv{model.get('num_key_value_heads')}-ff{model.get('intermediate_size')}-V{model.get('vocab_size')}")


def family_labels(models: list[dict[str, Any]]) -> list[str]:
    """``family_label`` of each (distinct) model, made unique: models whose short labels coincide
    get the keys on which they differ appended (``d576-...-V128256-rope_theta10000.0``), so no
    family hides another in a table, a CSV or a file name."""
    short = [family_label(m) for m in models]
    labels = []
    for model, label in zip(models, short):
        twins = [m for m, s in zip(models, short) if s == label]
        keys = sorted({k for m in twins for k in m if any(t.get(k) != m.get(k) for t in twins)})
        suffix = ''.join(f'-{k}{json.dumps(model.get(k), sort_keys=True, separators=(",", ":"))}' for k in keys)
        labels.append(label + re.sub(r'[^A-Za-z0-9_.=-]', '', suffix))
    return labels


def model_differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    return ', '.join(f'{k} {a.get(k)} vs {b.get(k)}' for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def group_by_model(items: Iterable[T], model_of: Callable[[T], Any]) -> list[list[T]]:
    """``items`` grouped by identical ``model_of(item)`` (first-seen order)."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(json.dumps(model_of(item), sort_keys=True), []).append(item)
    return list(groups.values())


def group_families(runs: Iterable[Run]) -> list[list[Run]]:
    """Runs grouped by identical ``model`` (first-seen order)."""
    return group_by_model(runs, lambda run: run.model)


def check_variants(runs: list[Run]) -> dict[str, dict[int, Run]]:
    """``{variant: {seed: run}}``; ``ValueError`` for two runs of one variant and seed, or one variant
    with two objectives."""
    variants: dict[str, dict[int, Run]] = {}
    for run in runs:
        seeds = variants.setdefault(run.variant, {})
        if run.seed in seeds:
            raise ValueError(f'{seeds[run.seed].folder} and {run.folder} are both variant {run.variant!r} with seed '
                             f'{run.seed}; pass only one of them.')
        other = next(iter(seeds.values()), None)
        if other is not None and (other.objective, other.augmentation) != (run.objective, run.augmentation):
            raise ValueError(f'{other.folder} and {run.folder} are both variant {run.variant!r} but train different '
                             f'objectives ({json.dumps([other.objective, other.augmentation])} vs '
                             f'{json.dumps([run.objective, run.augmentation])}).')
        seeds[run.seed] = run
    return dict(sorted(variants.items()))


def choose_baseline(variants: dict[str, dict[int, Run]], baseline: str) -> Optional[str]:
    """The variant named ``baseline``, else the one variant whose objective is ``baseline`` on
    unaugmented inputs (``ce`` is ``b000_ce`` in the ~500M family, never ``stochastok_ce``); None if
    there is none; ``ValueError`` if ambiguous."""
    if baseline in variants:
        return baseline
    firsts = {v: next(iter(seeds.values())) for v, seeds in variants.items()}
    matches = [v for v, run in firsts.items()
               if (run.objective or {'objective': 'ce'})['objective'] == baseline and run.augmentation is None]
    if len(matches) > 1:
        raise ValueError(f'--baseline {baseline!r} matches the objective of several variants {matches}; name one of them.')
    return matches[0] if matches else None


def comparison_tokens(runs: list[Run], at_tokens: Optional[int]) -> int:
    """``at_tokens`` (every run must have lm-eval records there), else the largest token count of
    lm-eval records that all runs have; ``ValueError`` naming each run that reached a later
    evaluation of another run (by its records or its ``metrics.csv``) but has no records there."""
    evaluations = {r.name: set(r.records[RECORDS_SUBDIR]) for r in runs}
    if at_tokens is not None:
        missing = [f'{r.name} ({sorted(evaluations[r.name])})' for r in runs if at_tokens not in evaluations[r.name]]
        if missing:
            raise ValueError(f'--at-tokens {at_tokens}: no records there for {", ".join(missing)} '
                             '(their evaluations are at the tokens listed).')
        return at_tokens
    common = set.intersection(*evaluations.values())
    if not common:
        raise ValueError('No evaluation that every run has reached: '
                         + '; '.join(f'{r.name} at tokens {sorted(evaluations[r.name])}' for r in runs)
                         + '. Pass --at-tokens, or only runs evaluated at common points.')
    tokens = max(common)
    later = sorted(set.union(*evaluations.values()) - common)
    lacking = [f'{r.name} lacks the lm-eval evaluation at {", ".join(f"{t:,}" for t in gaps)} tokens'
               for r in runs if (gaps := [t for t in later if t > tokens and t not in evaluations[r.name]
                                          and t <= max(r.trained_tokens, *evaluations[r.name])])]
    if lacking:
        raise ValueError(f'{"; ".join(lacking)} although it trained that far ({RECORDS_SUBDIR}/ba<batch>.jsonl.gz deleted '
                         f'or never written). Re-score those checkpoints with scripts/eval_checkpoint.py, or pass '
                         f'--at-tokens {tokens} to compare at the last evaluation every run has.')
    return tokens


def check_settings(runs: list[Run], tokens: int, kind: str = RECORDS_SUBDIR) -> dict[str, dict[str, Any]]:
    """``{run name: records header of kind at tokens}``; ``ValueError`` naming the first
    differences when two runs' evaluation settings differ (they must not be compared)."""
    headers = {r.name: read_header(r.records[kind][tokens]) for r in runs}
    (first_name, first), *rest = headers.items()
    for name, header in rest:
        differences = settings_differences(first['settings'], header['settings'])
        if differences:
            more = f' and {len(differences) - 3} more' if len(differences) > 3 else ''
            raise ValueError(f'Runs {first_name!r} and {name!r} were evaluated differently ({kind} records at {tokens:,} '
                             f'tokens: {"; ".join(differences[:3])}{more}), so their items cannot be compared. Re-score '
                             'one of them with scripts/eval_checkpoint.py using the other\'s settings.')
    return headers


def measured_kinds(runs: list[Run], tokens: int, notes: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{kind: {run name: header}}`` of every record kind that all runs have at ``tokens``
    (settings checked); a kind that some runs lack there (all of them, when it was measured at
    other tokens) is noted, naming them, and left out."""
    kinds = {}
    for kind in RECORD_KINDS:
        having = [r for r in runs if tokens in r.records.get(kind, {})]
        if len(having) == len(runs):
            kinds[kind] = check_settings(runs, tokens, kind)
        elif any(kind in r.records for r in runs):
            lacking = [f'{r.name} (has {kind} at {sorted(r.records.get(kind, {})) or "no"} tokens)'
                       for r in runs if r not in having]
            notes.append(f'{kind}: no records at {tokens:,} tokens for {", ".join(lacking)}; its rows are left out. '
                         f'Score the missing runs with scripts/eval_checkpoint.py.')
    return kinds


def build_families(runs: list[Run], baseline: str, at_tokens: Optional[int]) -> list[Family]:
    """Group, check and place every family; ``ValueError`` when a family has no baseline (runs of
    different families are never compared with each other)."""
    groups = group_families(runs)
    labels = family_labels([group[0].model for group in groups])
    families = []
    for group, label in zip(groups, labels):
        variants = check_variants(group)
        chosen = choose_baseline(variants, baseline)
        if chosen is None:
            elsewhere = [g for g in groups if g is not group and choose_baseline(check_variants(g), baseline)]
            hint = (f' The {baseline!r} runs are in family {labels[groups.index(elsewhere[0])]} '
                    f'({model_differences(group[0].model, elsewhere[0][0].model)}): runs of different model configs are '
                    'never compared.' if elsewhere else '')
            raise ValueError(f'Family {label} (runs {", ".join(r.name for r in group)}) has no baseline {baseline!r}.{hint} '
                             'Add its baseline runs, pass --baseline with one of its variants, or leave its folders out.')
        tokens = comparison_tokens(group, at_tokens)
        notes: list[str] = []
        kinds = measured_kinds(group, tokens, notes)
        base_seeds = set(variants[chosen])
        for variant, seeds in variants.items():
            unpaired = sorted(set(seeds) - base_seeds)
            if unpaired:
                notes.append(f'{variant}: seeds {unpaired} have no {chosen} replica and are left out of its comparison.')
        base_header = kinds[RECORDS_SUBDIR][variants[chosen][min(variants[chosen])].name]
        families.append(Family(label=label, model=group[0].model, runs=group, baseline=chosen, tokens=tokens,
                               batch=base_header['batch'], header=base_header, kinds=kinds, notes=notes))
    return families


