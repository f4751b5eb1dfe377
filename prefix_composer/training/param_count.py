"""Exact parameter counts of a ``LlamaConfig``, without allocating any weights.

The model is instantiated on the ``meta`` device (shapes only) and ``numel`` is summed over
unique parameters, so a tied input/output embedding is counted once, as it is trained once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
from transformers import LlamaConfig, LlamaForCausalLM


@dataclasses.dataclass(frozen=True)
class ParamCount:
    """Total parameters = embedding (input embedding, plus the LM head when untied) + the rest."""

    total: int
    embedding: int

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def count_llama_parameters(config: Mapping[str, Any]) -> ParamCount:
    """Parameter count of ``LlamaForCausalLM(LlamaConfig(**config))``; values must be resolved (no ``${...}``)."""
    unresolved = [k for k, v in config.items() if isinstance(v, str) and '${' in v]
    if unresolved:
        raise ValueError(f'Resolve the interpolations of {unresolved} before counting parameters.')
    with torch.device('meta'):
        model = LlamaForCausalLM(LlamaConfig(**dict(config)))
    unique = {id(p): p for p in model.parameters()}
    embedding_params = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return ParamCount(
        total=sum(p.numel() for p in unique.values()),
        embedding=sum(unique[i].numel() for i in embedding_params),
    )
