"""Prefix-path recovery against a float64 brute force on a tiny model with the real vocabulary:
positions drawn reproducibly among golds with a strict prefix, every path scored unpadded, one at a time."""

from __future__ import annotations

import math

import pytest
import torch
from llmfoundry.data.text_data import StreamingTextDataset

from lm_eval_helpers import tiny_model
from prefix_composer.evaluation.eval_split import sample_tokens
from prefix_composer.evaluation.prefix_recovery import draw_positions, recovery_plan, recovery_records, recovery_settings
from prefix_composer.evaluation.records import run_identity

SETTINGS = {'positions': 6, 'context': 8, 'seed': 0, 'batch_size': 4}


def continuation_logp(model, context: list[int], continuation: list[int]) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([context + continuation])).logits[0].double(), dim=-1)
    return sum(float(logp[len(context) - 1 + k, tok]) for k, tok in enumerate(continuation))


def test_recovery_equals_a_float64_brute_force(tokenizer, byte_vocab, tiny_mds):
    pieces, specials = byte_vocab
    dataset = StreamingTextDataset(tokenizer=tokenizer, local=str(tiny_mds), split='val', shuffle=False, max_seq_len=32,
                                   batch_size=4)
    model = tiny_model(tokenizer).model.eval()
    run = run_identity('r', 17, model.config.to_dict(), None)
    settings = recovery_settings(SETTINGS)
    records = recovery_records(model, tokenizer, dataset, recovery_plan(dataset, pieces, specials, settings), settings,
                               run, 3, 384, 'h')
    assert records.header['settings']['kind'] == 'recovery' and len(records.items) == 6
    reference = tiny_model(tokenizer).model.double().eval()
    known = {p: i for i, p in enumerate(pieces) if i not in specials}
    for item in records.items:
        sample, t = divmod(item['doc_id'], 32)
        tokens = sample_tokens(dataset, sample).tolist()
        gold, context = tokens[t], tokens[max(0, t - 8):t]
        assert item['gold'] == gold and t >= 1
        splits = [(known[pieces[gold][:k]], pieces[gold][k:]) for k in range(1, len(pieces[gold])) if pieces[gold][:k] in known]
        assert splits and [s[0] for s in item['prefixes']] == [p for p, _ in splits]
        logp_gold = continuation_logp(reference, context, [gold])
        mass, recovered = 0.0, 0.0
        for (p, rest), (_, rest_ids, lp, lr) in zip(splits, item['prefixes']):
            assert rest_ids == tokenizer(rest.decode('ascii'), add_special_tokens=False).input_ids
            ref_lp, ref_lr = continuation_logp(reference, context, [p]), continuation_logp(reference, context + [p], rest_ids)
            assert (lp, lr) == pytest.approx((ref_lp, ref_lr), abs=1e-4)
            mass, recovered = mass + math.exp(ref_lp), recovered + math.exp(ref_lp + ref_lr)
        metrics = item['metrics']
        assert metrics['logp_gold'] == pytest.approx(logp_gold, abs=1e-4)
        assert metrics['logp_marginal'] == pytest.approx(math.log(math.exp(logp_gold) + recovered), abs=1e-4)
        assert metrics['recovered_fraction'] == pytest.approx(recovered / mass, rel=1e-4)


def test_positions_are_a_seeded_draw_among_golds_with_a_strict_prefix(tokenizer, byte_vocab, tiny_mds):
    from prefix_composer.objectives import strict_prefix_ids
    dataset = StreamingTextDataset(tokenizer=tokenizer, local=str(tiny_mds), split='val', shuffle=False, max_seq_len=32,
                                   batch_size=4)
    prefixes = strict_prefix_ids(*byte_vocab)
    every = draw_positions(dataset, prefixes, 10**9, seed=0)
    expected = [(s, t) for s in range(dataset.num_samples) for t, tok in enumerate(sample_tokens(dataset, s).tolist())
                if t >= 1 and prefixes[tok]]
    assert every == expected
    drawn = draw_positions(dataset, prefixes, 20, seed=0)
    assert drawn == draw_positions(dataset, prefixes, 20, seed=0) and len(drawn) == 20 and set(drawn) < set(expected)
    assert drawn != draw_positions(dataset, prefixes, 20, seed=1)
    with pytest.raises(ValueError, match=r'callbacks\.lm_eval\.recovery\.context = 0 is invalid'):
        recovery_settings({'context': 0})


def test_a_training_run_scores_one_plan_at_every_lm_eval_evaluation(tokenizer, byte_vocab, tiny_mds, tmp_path):
    """Through ``train.py``'s main: the callback draws the positions once (fit start) and every
    evaluation scores those positions, the draw of ``draw_positions`` on the run's val split."""
    from prefix_composer.evaluation.records import read_records
    from prefix_composer.objectives import strict_prefix_ids
    from prefix_composer.runtime.launch import main as train_main
    from test_training import SMOKE, tiny_overrides

    train_main([SMOKE, *tiny_overrides(tiny_mds, tmp_path, eval_subset_num_batches=-1),
                'callbacks.lm_eval.tasks=[charbench]', 'callbacks.lm_eval.limit=2', 'callbacks.lm_eval.interval=2ba',
                'callbacks.lm_eval.recovery.positions=5', 'callbacks.lm_eval.recovery.context=8'])
    folder = tmp_path / 'smoke_cpu' / 'recovery'
    evaluations = [read_records(str(folder / f'ba{batch}.jsonl.gz')) for batch in (2, 4)]
    dataset = StreamingTextDataset(tokenizer=tokenizer, local=str(tiny_mds), split='val', shuffle=False, max_seq_len=32,
                                   batch_size=4)
    drawn = draw_positions(dataset, strict_prefix_ids(*byte_vocab), 5, seed=0)
    for records in evaluations:
        assert [divmod(item['doc_id'], 32) for item in records.items] == drawn
    assert evaluations[0].items != evaluations[1].items  # the same positions, scored by the model as it trained
