"""Local lm-eval tasks with items written here, a tiny Composer model and its batches (lm-eval tests)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import lm_eval
import torch
from composer import Trainer
from composer.loggers import InMemoryLogger
from composer.utils import dist
from torch.utils.data import DataLoader

from prefix_composer.evaluation.tasks import TASKS_DIR
from prefix_composer.training.model import PrefixLlamaForCausalLM

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / 'tasks'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# HellaSwag fields (activity_label, ctx_a, ctx_b, endings, label); gold ending first, rotated below.
HELLASWAG_SCENES = [
    ('Baking cookies', 'A man mixes flour, butter and sugar in a bowl.', 'he',
     ['rolls the dough into balls and puts the tray in the oven.', 'throws the bowl out of the window.',
      'reads the newspaper to the flour.', 'paints the sugar blue with a brush.']),
    ('Washing a car', 'A woman sprays water over a dusty red car.', 'she',
     ['scrubs the doors with a soapy sponge.', 'plants tomatoes on the roof of the car.',
      'folds the car into a small square.', 'teaches the hose to sing.']),
    ('Playing guitar', 'A boy sits on a chair holding a guitar.', 'he',
     ['strums the strings and starts to sing.', 'eats the guitar with a spoon.',
      'mails the chair to his aunt.', 'turns the strings into spaghetti.']),
    ('Walking the dog', 'A girl clips a leash onto her dog in the hallway.', 'they',
     ['walk out of the door and down the street.', 'fly over the roof like birds.',
      'dissolve into the carpet.', 'drive the dog to the moon.']),
]

# WinoGrande fields (sentence with one "_", option1, option2, answer "1"/"2"): twin sentences.
WINOGRANDE_ITEMS = [
    ('The trophy does not fit into the suitcase because the _ is too large.', 'trophy', 'suitcase', '1'),
    ('The trophy does not fit into the suitcase because the _ is too small.', 'trophy', 'suitcase', '2'),
    ('Anna lent her umbrella to Maria because _ was going out into the rain.', 'Anna', 'Maria', '2'),
    ('Anna lent her umbrella to Maria because _ was staying at home all day.', 'Anna', 'Maria', '1'),
    ('The glass fell on the pillow and did not break because the _ was soft.', 'glass', 'pillow', '2'),
    ('The glass fell on the pillow and broke into pieces because the _ was fragile.', 'glass', 'pillow', '1'),
    ('Tom could not lift the box onto the shelf because the _ was too heavy.', 'box', 'shelf', '1'),
    ('Tom could not lift the box onto the shelf because the _ was too high.', 'box', 'shelf', '2'),
]

TRAINING_TEXT = (
    'Spelling a word letter by letter is easy for people and hard for language models, because a '
    'tokenizer hides the characters of frequent words inside single pieces. A strawberry has three '
    'letters r, and a model that never sees them one at a time has to learn that fact from context. '
)


def hellaswag_items() -> list[dict]:
    items = []
    for i in range(8):
        activity, ctx_a, ctx_b, endings = HELLASWAG_SCENES[i % 4]
        label = (i + i // 4) % 4  # 8 distinct items, each gold position twice
        rotated = endings[-label:] + endings[:-label] if label else list(endings)  # gold ending moves to `label`
        items.append({'ind': i, 'activity_label': activity, 'ctx_a': ctx_a, 'ctx_b': ctx_b,
                      'ctx': f'{ctx_a} {ctx_b}', 'endings': rotated, 'source_id': f'test~{i}',
                      'split': 'val', 'split_type': 'indomain', 'label': str(label)})
    return items


def write_local_tasks(folder: Path) -> list[str]:
    """``local_hellaswag`` (lm-eval's hellaswag.yaml) and ``local_winogrande`` (our winogrande_debiased.yaml)
    on JSONL items written here; returns the task names."""
    folder.mkdir(parents=True, exist_ok=True)
    winogrande = [{'sentence': s, 'option1': a, 'option2': b, 'answer': y} for s, a, b, y in WINOGRANDE_ITEMS]
    for name, items, base in [
        ('local_hellaswag', hellaswag_items(), LM_EVAL_TASKS / 'hellaswag' / 'hellaswag.yaml'),
        ('local_winogrande', winogrande, TASKS_DIR / 'winogrande_debiased.yaml'),
    ]:
        data = folder / f'{name}.jsonl'
        data.write_text(''.join(json.dumps(item) + '\n' for item in items))
        (folder / f'{name}.yaml').write_text(
            f'include: {base}\ntask: {name}\ndataset_path: json\ndataset_name: null\n'
            f'dataset_kwargs:\n  data_files:\n    validation: {data}\ntraining_split: null\n',
        )
    return ['local_hellaswag', 'local_winogrande']


def tiny_model(tokenizer, seed: int = 0, attention_dropout: float = 0.0) -> PrefixLlamaForCausalLM:
    torch.manual_seed(seed)
    return PrefixLlamaForCausalLM(tokenizer, {
        'vocab_size': 128256, 'hidden_size': 32, 'num_hidden_layers': 2, 'num_attention_heads': 4,
        'num_key_value_heads': 2, 'intermediate_size': 64, 'max_position_embeddings': 64,
        'tie_word_embeddings': True, 'attention_dropout': attention_dropout,
    })


def token_loader(tokenizer, samples: int = 16, seq_len: int = 32, batch_size: int = 4) -> DataLoader:
    text_ids = tokenizer(TRAINING_TEXT, add_special_tokens=False).input_ids
    ids = text_ids * -(-samples * seq_len // len(text_ids))
    rows = [torch.tensor(ids[i * seq_len:(i + 1) * seq_len]) for i in range(samples)]
    samples = [{'input_ids': r, 'labels': r} for r in rows]
    return DataLoader(samples, batch_size=batch_size, sampler=dist.get_sampler(samples, shuffle=False))  # rank's share


def train_tiny(tokenizer, max_duration: str, callbacks=(), attention_dropout: float = 0.0, **trainer_kwargs):
    """Train ``tiny_model`` for ``max_duration`` on CPU; returns (model, InMemoryLogger)."""
    model = tiny_model(tokenizer, attention_dropout=attention_dropout)
    memory = InMemoryLogger()
    trainer = Trainer(
        model=model, train_dataloader=token_loader(tokenizer), max_duration=max_duration,
        optimizers=torch.optim.AdamW(model.parameters(), lr=1e-2), callbacks=list(callbacks), loggers=[memory],
        device='cpu', seed=17, progress_bar=False, log_to_console=False, **trainer_kwargs,
    )
    trainer.fit()
    trainer.close()
    return model, memory


def load_script(name: str):
    """``scripts/<name>.py`` as a module (its ``main`` runs in this process), registered in
    ``sys.modules`` as importlib's recipe has it (dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | BOS + context), tokenised as lm-eval does (whole string, then split)."""
    context_ids = [tokenizer.bos_token_id] + tokenizer(context, add_special_tokens=False).input_ids
    whole = [tokenizer.bos_token_id] + tokenizer(context + continuation, add_special_tokens=False).input_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].double(), dim=-1)
    return sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context_ids), len(whole)))
