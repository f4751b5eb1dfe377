"""A Composer model around HF ``LlamaForCausalLM`` whose training loss takes sparse soft targets.

The architecture is a ``LlamaConfig`` given in the YAML (no hub access). Training loss:
``losses.soft_target_cross_entropy`` against the targets that the ``PrefixSmoothing`` algorithm
puts in ``batch[SOFT_TARGETS_KEY]``; without the algorithm the target is one-hot (plain CE).
``loss`` returns ``{'total': objective, 'nll': plain NLL}`` so Composer logs both
(``loss/train/total``, ``loss/train/nll``). With ``loss_impl: fused`` (the default) the training
forward stops at the final hidden states and the loss runs the (tied) LM head chunk by chunk
(``losses/fused.py``), never materialising the [tokens x vocab] logits. Evaluation always computes
full logits; its metrics are plain cross-entropy, perplexity and token accuracy for every objective,
the mean probability on the gold token's strict prefixes P(s) and on R(s) (defined by the
vocabulary, the same for every objective) and the run's own objective (``metrics.py``).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from composer.metrics.nlp import LanguageCrossEntropy, LanguagePerplexity
from composer.models import HuggingFaceModel
from llmfoundry.metrics import TokenAccuracy
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutput

from prefix_composer.constants import IGNORE_INDEX, SOFT_TARGETS_KEY
from prefix_composer.losses import fused_linear_soft_target_cross_entropy, soft_target_cross_entropy
from prefix_composer.objectives.labels import next_token_labels, one_hot_targets
from prefix_composer.training.metrics import ObjectiveLoss, PrefixMassInclusive, PrefixMassStrict, VocabularyPrefixes

DEFAULT_LOSS_IMPL = 'fused'


class PrefixLlamaForCausalLM(HuggingFaceModel):
    """Llama-3-style causal LM for Composer; registered in llm-foundry as model ``prefix_llama``.

    Args:
        tokenizer: the run's tokenizer (llm-foundry passes it).
        config: ``LlamaConfig`` keyword arguments (hidden_size, num_hidden_layers, vocab_size, ...).
        loss_impl: training loss path. ``fused`` (default): ``forward`` returns the final hidden
            states and ``loss`` runs the LM head and the loss chunk by chunk (``losses.fused``), never
            holding the [tokens, vocab] logits. ``logits``: the HF path, full logits then
            ``soft_target_cross_entropy``. Same math; evaluation always computes full logits.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: Mapping[str, Any],
                 loss_impl: str = DEFAULT_LOSS_IMPL):
        if loss_impl not in ('fused', 'logits'):
            raise ValueError(f"model.loss_impl must be 'fused' or 'logits', got {loss_impl!r}.")
        if tokenizer is None:
            raise ValueError('prefix_llama needs a tokenizer: set `tokenizer:` in the YAML.')
        llama_config = LlamaConfig(**dict(config))
        if llama_config.vocab_size < len(tokenizer):
            raise ValueError(
                f'model.config.vocab_size={llama_config.vocab_size} is smaller than the tokenizer '
                f'({len(tokenizer)} ids); set it to at least {len(tokenizer)} (e.g. 128256 for Llama-3).',
            )
        prefixes = VocabularyPrefixes.of_tokenizer(tokenizer)  # one table for both prefix masses, built at the first evaluation
        super().__init__(
            model=LlamaForCausalLM(llama_config),
            tokenizer=tokenizer,
            use_logits=True,
            metrics=[],  # none by default; added ones are computed on a fresh forward (eval_forward)
            eval_metrics=[LanguageCrossEntropy(), LanguagePerplexity(), TokenAccuracy(), PrefixMassStrict(prefixes),
                          PrefixMassInclusive(prefixes), ObjectiveLoss()],
            shift_labels=True,
            allow_embedding_resizing=False,
        )
        self.tokenizer_size = len(tokenizer)
        self.loss_impl = loss_impl
        self._metadata: Optional[dict] = None

    def get_metadata(self) -> dict:
        """``HuggingFaceModel.get_metadata`` (the HF config and tokenizer files that every checkpoint
        carries), computed at the first checkpoint and reused: both are fixed for the run, and Composer
        derives them through temporary files and a JSON parse of the whole tokenizer at every save."""
        if self._metadata is None:
            self._metadata = super().get_metadata()
        return self._metadata

    def forward(self, batch: Mapping[str, Any]) -> CausalLMOutput:
        input_ids = batch['input_ids']
        if self.training:
            self._check_token_ids(input_ids)
        inputs = {'input_ids': input_ids, 'attention_mask': batch.get('attention_mask')}
        if self.training and self.loss_impl == 'fused':  # the head runs inside the fused loss
            return CausalLMOutput(hidden_states=self.model.model(**inputs).last_hidden_state)
        # LlamaForCausalLM's own forward: under FSDP the weights are gathered only around that call
        return CausalLMOutput(logits=self.model(**inputs).logits)

    def eval_forward(self, batch: Mapping[str, Any], outputs: Optional[Any] = None) -> Any:
        """``HuggingFaceModel.eval_forward`` on a fresh forward, whatever ``outputs`` it is handed.

        Composer passes the training outputs here to update train metrics; they hold no usable
        logits (the fused path makes none; on the logits path the loss has overwritten them with
        ``log_softmax`` and then their gradient), so train metrics see the logits of a forward of the
        same weights instead (one more forward per micro-batch, only when train metrics are added).
        """
        return super().eval_forward(batch)

    def loss(self, outputs: CausalLMOutput, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        labels = next_token_labels(batch['labels']).reshape(-1)
        targets = batch.get(SOFT_TARGETS_KEY)
        if targets is None:  # no PrefixSmoothing algorithm: plain cross-entropy
            targets = one_hot_targets(labels)
        if outputs.logits is None:
            hidden = outputs.hidden_states.reshape(labels.numel(), -1)
            total, nll = fused_linear_soft_target_cross_entropy(
                hidden, self.model.lm_head.weight, labels, targets, ignore_index=IGNORE_INDEX,
            )
        else:
            logits = outputs.logits.reshape(labels.numel(), -1)
            total, nll = soft_target_cross_entropy(logits, labels, targets, ignore_index=IGNORE_INDEX)
        return {'total': total, 'nll': nll}

    def _check_token_ids(self, input_ids: torch.Tensor) -> None:
        low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one pass, one host sync per micro-batch
        if high >= self.tokenizer_size or low < 0:
            bad = high if high >= self.tokenizer_size else low
            raise ValueError(
                f'The training data holds token id {bad}, outside the tokenizer\'s {self.tokenizer_size} ids: '
                'the dataset was tokenized with another tokenizer. Rebuild it with scripts/create_mds.py.',
            )
