"""Train with llm-foundry's entry point: ``composer train.py yamls/<variant>.yaml [key=value ...]``.

The model, algorithm, tokenizer and CSV logger of ``prefix_composer`` are registered in
llm-foundry's registries through entry points (pyproject.toml), so the YAML names them like
built-ins. ``prefix_composer.runtime.launch`` adds the run name default and the pre-flight checks.
"""

import sys

from prefix_composer.runtime.launch import main

if __name__ == '__main__':
    main(sys.argv[1:])
