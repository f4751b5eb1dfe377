"""prefix-composer: prefix-aware label smoothing for Llama-3-style LMs on Composer / llm-foundry.

The subpackages are layers (``README.md`` beside this file): objectives -> losses -> data ->
training (Composer glue) -> evaluation -> runtime -> analysis, over a shared foundation.
"""
