"""``composer train.py``'s main: load the YAML, pre-flight checks, then llm-foundry's ``train``.

Everything that can be checked before the first batch is checked here or while the Trainer is
built (objective arguments, model vocab, lm-eval tasks). Here, in order: keys that nothing would
read and durations that cannot work (``config_checks``), lm-eval's task names and ``limit``,
FSDP with the fused loss, the LR schedule against max_duration (``schedule``), then
(pre-flight) the run-folder lock, room for a checkpoint and writable output folders, the
checkpoints autoresume will load and the experiment they belong to, stale shared memory, and the
MDS data against the run and its shard files. Streaming's shared-memory registration is made one
dataset at a time per node (``shared_memory.install_serialized_registration``).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator, Optional, Sequence

from composer.utils import dist, format_name_with_dist, get_device
from llmfoundry.command_utils import train
from llmfoundry.utils.builders import build_tokenizer
from omegaconf import DictConfig
from omegaconf import OmegaConf as om

from prefix_composer.config import load_config
from prefix_composer.data.manifest import check_run_data
from prefix_composer.evaluation.callback import check_lm_eval_config
from prefix_composer.evaluation.records import default_records_folder
from prefix_composer.runtime.checkpoints import (
    check_checkpoint_space,
    local_save_folder,
    prepare_autoresume,
    remove_partial_files,
)
from prefix_composer.runtime.config_checks import check_config_keys, check_durations
from prefix_composer.runtime.experiment import check_experiment, take_allowed_changes
from prefix_composer.runtime.multinode import install_node_signal_file_name
from prefix_composer.runtime.run_folder import check_writable, lock_run_folder
from prefix_composer.runtime.schedule import check_schedule
from prefix_composer.runtime.run_record import recorded_start, take_allow_diverged_resume
from prefix_composer.runtime.shared_memory import clean_stale_streaming_shm, install_serialized_registration
from prefix_composer.training.csv_logger import DEFAULT_PATH, metrics_path
from prefix_composer.training.model import DEFAULT_LOSS_IMPL

log = logging.getLogger(__name__)


def check_parallelism(cfg: DictConfig) -> None:
    """Refuse FSDP with the fused loss, which reads ``lm_head.weight`` outside the model's forward,
    where FSDP holds only this rank's shard. llm-foundry ignores ``fsdp_config`` on one rank."""
    loss_impl = om.select(cfg, 'model.loss_impl', default=DEFAULT_LOSS_IMPL)
    if cfg.get('fsdp_config') is not None and loss_impl == 'fused' and dist.get_world_size() > 1:
        raise ValueError('fsdp_config is set with model.loss_impl: fused, whose LM head weight is a shard under FSDP; '
                         'set model.loss_impl: logits (full logits, the HF loss path) or remove fsdp_config (DDP).')


def output_folders(cfg: DictConfig, save_folder: Optional[str]) -> list[tuple[str, str]]:
    """(config key, folder) of what global rank 0 writes: checkpoints, ``metrics.csv``, lm-eval records."""
    folders = [('save_folder', save_folder)] if save_folder else []
    if om.select(cfg, 'loggers.csv') is not None:
        path = metrics_path(str(om.select(cfg, 'loggers.csv.path') or DEFAULT_PATH), str(cfg.run_name))
        folders.append(('loggers.csv.path', os.path.dirname(os.path.abspath(path))))
    if om.select(cfg, 'callbacks.lm_eval') is not None:
        records_dir = om.select(cfg, 'callbacks.lm_eval.records_dir')
        if records_dir is not None:
            folders.append(('callbacks.lm_eval.records_dir', format_name_with_dist(str(records_dir), cfg.run_name)))
        elif save_folder:
            folders.append(('callbacks.lm_eval.records_dir (unset: <save_folder>/../lm_eval)',
                            default_records_folder(save_folder)))
    return folders


def checked_save_folder(cfg: DictConfig) -> Optional[str]:
    """Global rank 0's checks of the output folders; returns the local save_folder (None: none or remote).

    Run under the run folder's lock: first the ``partial-*`` leftovers of an interrupted save are
    deleted (on a full disk they are what fills it), then the save_folder must have room for one
    more checkpoint (``check_checkpoint_space``), then every output folder must be writable.
    """
    save_folder = local_save_folder(cfg)
    if cfg.get('save_folder') and save_folder is None:
        log.warning('save_folder %s is remote: its checkpoints, run lock and experiment record are not checked '
                    'at start-up.', cfg.save_folder)
    if save_folder and os.path.isdir(save_folder):
        remove_partial_files(save_folder)
        check_checkpoint_space(save_folder)
    for key, folder in output_folders(cfg, save_folder):
        check_writable(key, folder)
    return save_folder


def recorded_checked_start(cfg: DictConfig, save_folder: Optional[str], allow_diverged: bool) -> ContextManager:
    """Global rank 0, under the lock: ``checked_save_folder`` first (on a full disk its clean-up is what
    frees room), then this start recorded in the save_folder for as long as the returned context runs."""
    checked_save_folder(cfg)
    return recorded_start(save_folder, str(cfg.run_name), allow_diverged) if save_folder else nullcontext()


@contextmanager
def preflight(cfg: DictConfig, allowed_changes: Sequence[str] = (), allow_diverged: bool = False) -> Iterator[None]:
    """Checks that need no Trainer, then holds the run folder's lock while the caller trains.

    Global rank 0: the save_folder is locked for this process (another live run on it stops this
    one); ``checked_save_folder`` (leftovers of an interrupted save deleted, room for a checkpoint,
    every output folder writable); a folder whose last start diverged is refused unless
    ``allow_diverged``, and this start and how it ends are recorded (``run_record``); autoresume
    will load the newest intact checkpoint (broken ones set aside); a resumed run is the experiment
    that wrote the checkpoints (``check_experiment``, ``allowed_changes`` let through). Local rank 0
    of every node: stale Streaming shared memory is removed. Every rank: the MDS data was made for
    this tokenizer and max_seq_len, and its shard files are whole.
    """
    rank_zero = dist.get_global_rank() == 0
    save_folder = local_save_folder(cfg) if rank_zero else None
    # the second context is built once the lock is held
    with lock_run_folder(save_folder) if save_folder else nullcontext(), \
            recorded_checked_start(cfg, save_folder, allow_diverged) if rank_zero else nullcontext():
        if save_folder:
            check_experiment(cfg, save_folder, resuming=prepare_autoresume(cfg) is not None, allowed=allowed_changes)
        if dist.get_local_rank() == 0:
            clean_stale_streaming_shm()
        kwargs = om.to_container(cfg.tokenizer.kwargs, resolve=True) if cfg.tokenizer.get('kwargs') else {}
        check_run_data(cfg, build_tokenizer(cfg.tokenizer.name, kwargs))
        yield


def configure_logging(cfg: DictConfig) -> None:
    """llm-foundry's log format, set up before the pre-flight, with ``python_log_level`` for our modules."""
    logging.basicConfig(format=f'%(asctime)s: rank{os.environ.get("RANK", "0")}[%(process)d][%(threadName)s]: '
                        '%(levelname)s: %(name)s: %(message)s')
    logging.getLogger('prefix_composer').setLevel(str(cfg.get('python_log_level') or 'warning').upper())


def main(argv: Sequence[str]) -> None:
    if not argv:
        raise SystemExit('usage: composer train.py yamls/<variant>.yaml [key=value ...]')
    cfg = load_config(argv[0], argv[1:])
    allowed_changes = take_allowed_changes(cfg)
    allow_diverged = take_allow_diverged_resume(cfg)
    configure_logging(cfg)
    check_config_keys(cfg)
    check_durations(cfg)
    if om.select(cfg, 'callbacks.lm_eval') is not None:
        check_lm_eval_config(om.to_container(cfg.callbacks.lm_eval, resolve=True))
    check_parallelism(cfg)
    check_schedule(cfg)
    # With several ranks build_tokenizer (pre-flight) synchronises them, so the process group must
    # exist first; llm-foundry's train() finds it initialised.
    dist.initialize_dist(get_device(None), timeout=cfg.get('dist_timeout', 600.0))
    install_node_signal_file_name()
    install_serialized_registration()
    with preflight(cfg, allowed_changes, allow_diverged):
        om.clear_resolver('oc.env')  # as llm-foundry's train_from_yaml
        train(cfg)
