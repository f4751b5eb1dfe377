"""Power before a sweep: the minimum detectable effect (MDE, 80% power) of every planned
comparison, from assumed item counts, seeds and item-level spread, at the level the report will
test it (``alpha / m`` over its section, as ``rows.adjust_and_mark`` gives the MDE column).

With ``S`` seed replicas paired with the baseline's, a row's test is on the seed-averaged item
differences ``d_i = mean_k d[k, i]``, and seed pairs are independent given the item, so
``M2 = E d_i^2 = E d[k, i]^2 / S``: ``discordance / S`` for 0/1 outcomes (the share of items on
which a variant and its paired baseline disagree) and ``sd^2 / S`` for real values (the sd of one
seed pair's item difference). ``stats.minimum_detectable_effect`` turns ``M2``, the item count and
the level into the MDE.
"""

from __future__ import annotations

import dataclasses

from prefix_composer.analysis.stats import minimum_detectable_effect

# Item counts of the full lm-eval tasks; CharBench has 11 single-token and 11 multi-token subtasks.
LM_EVAL_ITEMS = {'hellaswag': 10042, 'piqa': 1838, 'winogrande': 1267, 'arc_easy': 2376}
CHARBENCH_SUBTASKS = 11
CHARBENCH_ITEMS = 300
# Validation sequences of the production YAMLs: their whole val split is evaluated (eval_subset_num_batches -1),
# variables.data.val_tokens 10,000,000 packed into max_seq_len 2,048 (tests/test_stats.py checks it against the YAMLs).
VALIDATION_SEQUENCES = 10_000_000 // 2048
# Probe items: the Llama-3 ids whose bytes are ASCII letters with an optional leading space.
PROBE_TOKENS = 71_202
RECOVERY_POSITIONS = 2000
VALIDATION_CLASSES = 8  # nll_prefixes_{0,1,2,3+}, nll_bytes_{1,2-3,4-6,7+}


@dataclasses.dataclass(frozen=True)
class PlanRow:
    """One planned comparison: its section, items, assumed spread (``kind`` 'discordance' or 'sd'
    of one seed pair) and the MDE unadjusted and at its section's level."""

    label: str
    section: str
    items: int
    kind: str
    spread: float
    level: float
    mde_unadjusted: float
    mde: float


def plan_rows(seeds: int = 3, variants: int = 8, alpha: float = 0.05, discordance: float = 0.25,
              lm_eval_items: dict[str, int] = LM_EVAL_ITEMS, charbench_items: int = CHARBENCH_ITEMS,
              validation_sequences: int = VALIDATION_SEQUENCES, validation_sd: float = 0.05,
              probe_tokens: int = PROBE_TOKENS, probe_discordance: float = 0.1, probe_contains_sd: float = 0.1,
              recovery_positions: int = RECOVERY_POSITIONS, recovery_sd: float = 0.5,
              recovered_fraction_sd: float = 0.1) -> list[PlanRow]:
    """The headline rows and one row per exploratory kind, for ``variants`` objectives (one the
    baseline) with ``seeds`` replicas each, the report's levels ``alpha / m``."""
    group_items = CHARBENCH_SUBTASKS * charbench_items
    headline = [(f'{task} acc', n, 'discordance', discordance) for task, n in lm_eval_items.items()]
    headline += [(f'charbench_{kind} acc', group_items, 'discordance', discordance) for kind in ('single', 'multi')]
    headline += [('val nll', validation_sequences, 'sd', validation_sd),
                 ('probe_contains acc', probe_tokens, 'sd', probe_contains_sd),
                 ('probe_first_letter acc', probe_tokens, 'discordance', probe_discordance),
                 ('probe_length acc', probe_tokens, 'discordance', probe_discordance),
                 ('recovery logp_marginal', recovery_positions, 'sd', recovery_sd),
                 ('recovery recovered_fraction', recovery_positions, 'sd', recovered_fraction_sd)]
    exploratory = [('charbench subtask acc', charbench_items, 'discordance', discordance, 2 * CHARBENCH_SUBTASKS),
                   ('val nll per class', validation_sequences, 'sd', validation_sd, VALIDATION_CLASSES),
                   ('recovery logp_gold', recovery_positions, 'sd', recovery_sd, 1)]
    compared = variants - 1
    sections = [('headline', [(*row, 1) for row in headline]), ('exploratory', exploratory)]
    out = []
    for section, rows in sections:
        m = compared * sum(count for *_, count in rows)
        for label, n, kind, spread, _ in rows:
            second_moment = (spread if kind == 'discordance' else spread ** 2) / seeds
            out.append(PlanRow(label=label, section=section, items=n, kind=kind, spread=spread, level=alpha / m,
                               mde_unadjusted=minimum_detectable_effect(second_moment, n, alpha),
                               mde=minimum_detectable_effect(second_moment, n, alpha / m)))
    return out
