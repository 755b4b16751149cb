"""Training: one run from a RunConfig to a finished run directory.

The trajectory is a function of the config alone: the model is initialised from
``torch.manual_seed(seed)``, each epoch's batch order is one permutation seeded from
(seed, epoch) (:func:`mmrl.engine.schedule.epoch_batches`) and each image's augmentation is
seeded from (seed, epoch, index) (:class:`mmrl.data.ImageDataset`); the learning rate is a
function of the epoch (:func:`mmrl.engine.schedule.lr_at_epoch`). A checkpoint written
atomically after every epoch therefore lets a crashed (or ``kill -9``-ed) run continue to
bit-identical weights on the CPU.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same trajectory is computed data-parallel with
``DistributedDataParallel``: every rank takes its slice of each global batch
(:func:`mmrl.engine.schedule.rank_batches`), the loss is given the global batch size, the
world size and per-sample weights so that DDP's gradient average is the single-process
gradient, the step metrics are summed over ranks, and the final evaluation is sharded over
the ranks (:mod:`mmrl.engine.distributed`). Only rank 0 writes the run directory and
logs; the decision to start, resume or return a finished run is rank 0's, broadcast.
"""
from __future__ import annotations

import dataclasses
import logging
import shlex
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from mmrl import data
from mmrl.backbone_spec import TOY_CLIP_NAME
from mmrl.config import (ConfigError, RunConfig, canonical_dataset, config_differences, load_config, toy_settings,
                         validate)
from mmrl.data.imagefolder import is_user_spec
from mmrl.engine import distributed as ddp_util
from mmrl.engine import precision as amp
from mmrl.engine import rundir as rd
from mmrl.engine import sinks
from mmrl.engine.cost import CostMeter, combine_ranks
from mmrl.engine.evaluator import EvalRequest, evaluate
from mmrl.engine.checkpoint import (checkpoint_epoch, checkpoint_recovery, load_checkpoint, set_rng_state)
from mmrl.engine.lock import RunDirLock
from mmrl.engine.runtime import (FILE_ONLY, Progress, autocast, check_method_fits, load_backbone_checked,
                                 resolve_device, use_tty_progress)
from mmrl.engine.schedule import epoch_batches, lr_at_epoch, rank_batches, steps_per_epoch
from mmrl.errors import CorruptFileError, RunInterrupted, UserError, error_line
from mmrl.models import build_method
from mmrl.models.losses import Criterion, build_criterion, cross_entropy
from mmrl.models.towers import image_resizing
from mmrl.vocab import harmonic_mean

LOG = logging.getLogger("mmrl")


class NonFiniteLossError(UserError, RuntimeError):
    """The training loss became NaN/inf; the run stopped and kept its last good checkpoint."""




def optimizer_step(out, optimizer, scaler, *, step: int, where: str, loss: torch.Tensor | None = None) -> None:
    """Backpropagate ``out.total`` and step. Raises NonFiniteLossError BEFORE any parameter
    changes if ``loss`` (default ``out.total``; the loss summed over ranks under data
    parallelism, so that all ranks stop together) is not finite."""
    total = out.total.float()
    seen = total if loss is None else loss
    if not torch.isfinite(seen):
        raise NonFiniteLossError(f"non-finite training loss ({seen.item()}) at step {step} ({where})")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()


def train_step(model, optimizer, scaler, images: torch.Tensor, labels: torch.Tensor, *, device: torch.device,
               precision: str, step: int, where: str, **loss_kw):
    """One optimiser step on one batch; returns the LossOutput.

    ``loss_kw`` goes to ``model.loss``. Raises NonFiniteLossError BEFORE any parameter
    changes if the loss is not finite. (Data parallelism calls the DDP wrapper's forward
    and :func:`optimizer_step` itself, see :func:`_ddp_train_step`.)
    """
    out = amp.loss(model, images, labels, device=device, precision=precision, **loss_kw)
    optimizer_step(out, optimizer, scaler, step=step, where=where)
    return out


def _ddp_train_step(ddp, optimizer, scaler, images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                    global_batch: int, *, info: ddp_util.DistInfo, device: torch.device, precision: str,
                    step: int, where: str, criterion: Criterion = cross_entropy):
    """One data-parallel step on this rank's slice of a global batch.

    The forward goes through the DDP wrapper (its reducer averages the gradients over
    ranks in backward); ``MMRL.loss`` gets the global batch size, the world size and the
    per-sample weights, so the averaged gradient is the single-process gradient of the
    global batch. Returns ``(LossOutput, metrics)`` where metrics (float64, CPU) are the
    GLOBAL batch's ``[loss, ce_class, ce_rep, reg_image, reg_text, accuracy]``: the
    per-sample terms summed over ranks, ``loss = sum_ranks sample_part + lambda reg_text``,
    accuracy = summed correct / summed real samples. The sum is one collective before the
    backward pass, so a non-finite loss on any rank stops every rank at the same step.
    """
    with autocast(device, precision):
        out = ddp(images, labels, batch_size=global_batch, weights=weights, world_size=info.world_size,
                  criterion=criterion)
    with torch.no_grad():
        real = weights > 0
        correct = ((out.logits.fused.argmax(-1) == labels) & real).sum()
        part = torch.stack([out.sample_part.float(), out.ce_class.float(), out.ce_rep.float(),
                            out.reg_image.float(), correct.float(), real.sum().float()]).double()
        part = ddp_util.all_reduce_sum(part, info).cpu()
    reg_text = out.reg_text.detach().double().cpu()  # the same on every rank (same text parameters)
    loss = part[0] + ddp.module.cfg.reg_weight * reg_text
    optimizer_step(out, optimizer, scaler, step=step, where=where, loss=loss)
    metrics = torch.stack([loss, part[1], part[2], part[3], reg_text, part[4] / part[5].clamp(min=1)])
    return out, metrics


def _prepare_run_dir(cfg: RunConfig, run_dir: Path) -> dict | None:
    """Check a run directory that already holds a run; return its results if finished."""
    cfg_path = run_dir / rd.CONFIG_FILE
    if not cfg_path.is_file():
        return None
    try:
        stored = load_config(cfg_path)
    except ConfigError as e:
        raise ConfigError(f"{run_dir} holds a run whose config cannot be read ({e}); "
                          "choose another --output or delete that directory") from e
    diffs = config_differences(stored, cfg)
    started = (run_dir / rd.CHECKPOINT_FILE).is_file() or (run_dir / rd.ADAPTER_FILE).is_file()
    if diffs and not started:
        LOG.warning("%s: replacing a run that never completed an epoch (%s)", run_dir, "; ".join(diffs))
        return None
    if diffs:
        raise ConfigError(f"{run_dir} already holds a run with a different configuration ("
                          + "; ".join(diffs) + "); choose another --output, or delete that directory to start over")
    info = rd.read_run_info(run_dir) or {}
    results = rd.read_results(run_dir)
    if info.get("status") == "finished" and results is not None and (run_dir / rd.ADAPTER_FILE).is_file():
        return results
    return None


def train(cfg: RunConfig, *, progress: bool | None = None,
          on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one run and evaluate it as its protocol says; returns the results dict.

    The run directory is ``cfg.run_dir()``. If it already holds this run (same config up
    to paths/device/eval settings): a finished run returns its stored results, an
    unfinished one resumes from its last checkpoint. A different config there is an error.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank calls this and trains its share of
    each global batch (see the module docstring); every rank returns the same results, only
    rank 0 writes. The process group is joined here if needed and left to the caller.

    The run directory has one writer: this function holds its lock (``RUN_DIR/.lock``,
    :class:`mmrl.engine.lock.RunDirLock`; under torchrun rank 0 holds it for the job) from
    before the decision to start, resume or return until the last file is written.

    Args:
        cfg: the resolved configuration (see :func:`mmrl.config.resolve_config`).
        progress: tqdm bars (True), plain periodic log lines (False) or auto (None: bars on a TTY).
        on_epoch_end: called after each epoch's checkpoint with
            ``{"epoch", "step", "lr", "loss", "accuracy", "run_dir"}`` (``epoch`` = epochs done);
            under torchrun on rank 0 only.
    Returns:
        ``{"protocol", "method", "dataset", ..., "accuracy"}`` or, for base-to-novel,
        ``{"base", "novel", "hm"}``; also written to ``RUN_DIR/results.json``.
    Raises:
        ConfigError: before any work, for invalid settings; NonFiniteLossError: the loss
        became NaN/inf (the run is marked failed, the last good checkpoint kept);
        RunLockedError: another live process writes into the run directory;
        NotWritableError: the run directory cannot be written (before any work);
        RunInterrupted: Ctrl-C/SIGTERM (the run is marked ``interrupted``; the message says
        where it stopped and the command that resumes it).
    """
    if cfg.data.dataset:  # a config built in Python may name a dataset by an alias
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset=canonical_dataset(cfg.data.dataset)))
    validate(cfg)
    run_dir = cfg.run_dir()
    cfg = dataclasses.replace(cfg, output=str(run_dir))
    dinfo = ddp_util.init_distributed(cfg.device)  # single process: a no-op
    held: list[RunDirLock] = []  # rank 0's writer lock of the run directory

    def lock() -> None:
        held.append(RunDirLock.acquire(run_dir, "mmrl train", hint="choose another --output"))

    ddp_util.on_main(lock, dinfo)  # a refusal on rank 0 stops every rank
    try:
        return _train_locked(cfg, run_dir, dinfo, progress, on_epoch_end)
    finally:
        for h in held:
            h.release()


def _train_locked(cfg: RunConfig, run_dir: Path, dinfo: ddp_util.DistInfo, progress: bool | None,
                  on_epoch_end: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """:func:`train` once the run directory's writer lock is held."""
    is_main = dinfo.is_main
    # rank 0 owns the run directory: its decision (fresh / resume / finished) holds for all ranks
    done = ddp_util.on_main(lambda: _prepare_run_dir(cfg, run_dir), dinfo)
    if done is not None:
        LOG.info("%s: already finished; results: %s", run_dir, _results_line(done))
        return done
    # where the data is (a user folder that is not there), and settings that need the backbone,
    # are checked before anything is written
    data.locate(cfg.data.dataset, cfg.data.root, template=cfg.data.template)
    sinks.check_available(cfg.logging.report_to)  # a missing optional package: one line, before anything is written
    if cfg.data.split_file is not None and not Path(cfg.data.split_file).is_file():
        raise data.MissingDataError(f"data.split_file: no such file: {cfg.data.split_file}")
    device = ddp_util.local_device(resolve_device(cfg.device), dinfo)
    meter = CostMeter()
    with ddp_util.local_rank0_first(dinfo), meter.phase("backbone_load"):  # one download per node of a backbone not cached yet
        backbone = load_backbone_checked(cfg.backbone, device=device)
    precision, precision_reason = amp.choose_precision(cfg.precision, device, amp.tower_width(backbone))
    check_method_fits(backbone, cfg.method)
    files = rd.RunFiles(run_dir, writes=is_main)
    info = files.start(cfg, dinfo)
    info.precision_reason = precision_reason
    t_start = time.time()
    with files.log():
        try:
            results = _train_and_evaluate(cfg, files, info, backbone, device, precision, progress, on_epoch_end,
                                          dinfo, meter)
        except KeyboardInterrupt:
            where = _where_stopped(info, cfg.optim.epochs, files.checkpoint_path if is_main else None)
            msg = (f"training stopped {where}; {run_dir} is marked interrupted; resume with: "
                   f"mmrl train --resume {shlex.quote(str(run_dir.absolute()))}")
            info.update(status="interrupted", interrupted=rd.now_iso(), stopped=where)
            info.unset("error")
            files.info(info)
            LOG.warning("interrupted: %s", msg, extra=FILE_ONLY)  # the command line prints it once
            raise RunInterrupted(msg) from None
        except BaseException as e:
            error = ddp_util.describe_error(e) if dinfo.enabled else f"{type(e).__name__}: {error_line(e)}"
            info.update(status="failed", error=error, failed=rd.now_iso())
            files.info(info)
            where = f" on rank {dinfo.rank} of {dinfo.world_size}" if dinfo.enabled else ""
            # one process: the command line reports the error itself (one line); under torchrun the
            # rank's own line says which rank failed
            LOG.error("run failed%s: %s", where, error, extra=None if dinfo.enabled else FILE_ONLY)
            raise
        info.update(status="finished", finished=rd.now_iso())
        info.timings["total_s"] = round(time.time() - t_start, 3)  # this attempt's wall time
        info.unset("error")
        files.finish(info)
        LOG.info("finished %s: %s", run_dir, _results_line(results))
    return results


def _where_stopped(info: rd.RunInfo, epochs: int, ckpt_path: Path | None) -> str:
    """Where a run stopped: the epochs done (``info.epochs_done``, or the checkpoint on disk,
    from which a resume starts, when that is further: the stop may have come just after it
    was written)."""
    on_disk = checkpoint_epoch(ckpt_path) if ckpt_path is not None else None
    if not info.has("epochs_done") and on_disk is None:
        return "before its first epoch began"
    done = max(int(info.get("epochs_done", 0)), on_disk or 0)
    if done >= epochs:
        return f"after its last epoch (all {epochs} trained; the final evaluation runs on resume)"
    kept = f"; {done} done, kept in {rd.CHECKPOINT_FILE}" if done else ""
    return f"in epoch {done + 1} of {epochs}{kept}"


def _check_training_classes(splits) -> None:
    """Refuse, before training, a training split with fewer than 2 classes (the loss of a
    one-class classifier is 0 whatever the weights; a base-to-novel run would then also lack
    novel classes to evaluate)."""
    labels = sorted({d.label for d in splits.train})
    if len(labels) >= 2:
        return
    names = ", ".join(repr(splits.classnames[y]) for y in labels) or "none"
    raise data.DataError(
        f"{splits.name}: the training split has {len(labels)} class ({names}); training needs at least 2 classes "
        "(base-to-novel trains on the first half of the classes, so its dataset needs at least 3); "
        "add class folders, or check --dataset / data.split_file")


def _results_line(r: dict) -> str:
    if "hm" in r:
        return f"base {r['base']:.2f}%, novel {r['novel']:.2f}%, HM {r['hm']:.2f}%"
    return f"accuracy {r['accuracy']:.2f}%"


@dataclasses.dataclass
class _Training:
    """What the epochs need, set up once for a fresh or a resumed run."""
    model: Any                      # the method's model (mmrl.methods.MethodModel)
    ddp: Any                        # its DistributedDataParallel wrapper under torchrun, else None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_ds: Any                   # mmrl.data.ImageDataset
    start_epoch: int                # epochs already done (a resumed run's checkpoint)
    step: int                       # optimiser steps already done
    resumed: bool
    criterion: Criterion            # the per-sample classification loss (optim.loss, optim.balance)
    meter: CostMeter | None = None  # what the run costs (mmrl.engine.cost)


def _train_and_evaluate(cfg: RunConfig, files: rd.RunFiles, info: rd.RunInfo, backbone, device: torch.device,
                        precision: str, progress: bool | None,
                        on_epoch_end: Callable[[dict[str, Any]], None] | None,
                        dinfo: ddp_util.DistInfo = ddp_util.DistInfo(),
                        meter: CostMeter | None = None) -> dict[str, Any]:
    """Set up (or resume), train the remaining epochs, save the adapter, evaluate."""
    meter = meter or CostMeter()
    t_setup = time.time()
    with meter.phase("setup"):
        tr = _set_up(cfg, files, info, backbone, device, precision, dinfo, meter)
    tr.meter = meter
    timings = info.timings
    timings["setup_s"] = round(time.time() - t_setup, 3)
    with meter.phase("train"):
        _train_epochs(cfg, tr, files, info, device, precision, progress, on_epoch_end, dinfo)
    info.adapter_sha256 = files.adapter(tr.model, cfg)  # load_run checks the file against it
    files.info(info)
    t_eval = time.time()
    results = _evaluate_run(cfg, tr.model, files.dir, progress, meter)
    timings["eval_s"] = round(time.time() - t_eval, 3)
    meter.count_eval_flops(tr.model, amp.inference_precision(tr.model, cfg.eval.precision, device))  # auto resolved
    mine = meter.block(device=device, precision=precision, model=tr.model, steps=tr.step,
                       images_seen=int(info.get("epochs_done", 0)) * len(tr.train_ds),
                       train_s=float(timings.get("train_s", 0.0)), world_size=dinfo.world_size)
    info.cost = results["cost"] = combine_ranks(ddp_util.all_gather_objects(mine, dinfo))
    files.results(results)
    files.evaluated(results, step=tr.step)
    return results


def _set_up(cfg: RunConfig, files: rd.RunFiles, info: rd.RunInfo, backbone, device: torch.device, precision: str,
            dinfo: ddp_util.DistInfo, meter: CostMeter) -> _Training:
    """The splits, the model, the optimiser and the training data; the checkpoint's state when
    the run resumes (rank 0 decides; every rank then reads the same checkpoint, so the run
    directory must be visible to all nodes to resume a multi-node run)."""
    LOG.info("run %s: %s, %s, %s, %d shots, seed %d, backbone %s, device %s, precision %s", files.dir,
             cfg.method.name, cfg.protocol, cfg.data.dataset, cfg.data.shots, cfg.seed, cfg.backbone, device,
             precision)
    if dinfo.enabled:
        LOG.info("data parallel: %d processes (torchrun), global batch %d", dinfo.world_size, cfg.optim.batch_size)
    _say_if_toy_clip_without_toy_settings(cfg)
    data.set_random_seed(cfg.seed)
    splits = data.prepare_splits(cfg.data.dataset, cfg.data.root, shots=cfg.data.shots, seed=cfg.data_seed,
                                 subsample=cfg.data.subsample, split_file=cfg.data.split_file,
                                 cache_dir=cfg.data.cache_dir, template=cfg.data.template,
                                 **data.corruption_options(cfg.data))
    if splits.test_only or not splits.train:
        raise data.DataError(f"{splits.name} has no training images (test-only dataset?); train on a dataset "
                             "with a train split")
    _check_training_classes(splits)
    files.split(splits)
    if is_user_spec(cfg.data.dataset) and cfg.data.subsample != "all":  # the other half, as it is now
        other = data.prepare_splits(cfg.data.dataset, cfg.data.root, shots=cfg.data.shots, seed=cfg.data_seed,
                                    subsample="new" if cfg.data.subsample == "base" else "base",
                                    cache_dir=cfg.data.cache_dir, template=cfg.data.template)
        files.split(other, rd.OTHER_SPLIT_FILE)
    LOG.info("%s", splits.summary())
    info.shots_realised = _realised_shots(splits, cfg.data.shots if cfg.data.imbalance.type == "none" else 0)
    info.update(**data.corruption_record(splits, cfg.data))  # label noise / class imbalance: settings, realised

    torch.manual_seed(cfg.seed)  # model init depends on the seed only (the same on every rank)
    model = build_method(backbone, cfg.method)
    if not dinfo.enabled:  # frozen weights in bf16 once (CPU); DDP keeps autocasting fp32 weights
        amp.cast_frozen(model, precision)
    info.trainable_parameters = model.num_trainable_parameters()
    info.device, info.precision = str(device), precision
    info.template = splits.template  # with split.json's class names: what `mmrl predict RUN` ranks
    files.info(info)
    with meter.phase("text_encoding"):
        model.set_classes(splits.classnames, splits.template)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr_at_epoch(0, cfg.optim), betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    start_epoch = step = 0
    ckpt_path = files.checkpoint_path
    resume = ddp_util.broadcast_object(ckpt_path.is_file() if dinfo.is_main else None, dinfo)
    if resume:
        ck = load_checkpoint(ckpt_path)  # CorruptFileError (naming the file and the way out) if unreadable
        try:
            model.load_adapter_state_dict(ck.adapter)
            optimizer.load_state_dict(ck.optimizer)
            if ck.scaler and scaler.is_enabled():
                scaler.load_state_dict(ck.scaler)
            set_rng_state(ck.rng_tensors, ck.rng_json)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CorruptFileError(f"{ckpt_path} does not fit this run ({e}); {checkpoint_recovery(ckpt_path)}") \
                from e
        start_epoch, step = ck.epoch, ck.step
        LOG.info("resuming from %s: %d of %d epochs done (step %d)", ckpt_path, start_epoch, cfg.optim.epochs, step)
    info.epochs_done = start_epoch

    train_ds = data.ImageDataset(splits.train, data.build_transform(True, **image_resizing(backbone.clip)), seed=cfg.seed,
                                 skip_bad=cfg.data.skip_bad_images)
    n = len(train_ds)
    if n == 0:
        raise data.DataError(f"{splits.name}: no readable training images")
    if resume:
        _check_checkpoint_progress(ckpt_path, start_epoch, step, cfg.optim.epochs,
                                   steps_per_epoch(n, cfg.optim.batch_size))
    ddp = None
    if dinfo.enabled:
        counts = ddp_util.all_gather_objects(n, dinfo)
        if len(set(counts)) > 1:
            raise data.DataError(f"{splits.name}: the ranks read different numbers of training images {counts} "
                                 "(every node must see the same data under data.root)")
        # DDP broadcasts rank 0's parameters (identical anyway: same seed, same checkpoint) and
        # averages gradients; optimizer, checkpoints and the adapter file use `model` itself
        ddp = ddp_util.wrap_ddp(model, device)
    # the class counts of the realised training split: an imbalanced sample's own frequencies
    criterion = build_criterion(cfg.optim.loss, cfg.optim.gce_q, cfg.optim.balance, cfg.optim.balance_tau,
                                splits.train_counts())
    return _Training(model, ddp, optimizer, scaler, train_ds, start_epoch, step, bool(resume), criterion)


def _say_if_toy_clip_without_toy_settings(cfg: RunConfig) -> None:
    """The presets hold the published ViT-B/16 settings; on the tiny toy CLIP they train it below
    zero-shot. Say so at the start, and where the toy world's own settings (the demo's) are."""
    if cfg.backbone != TOY_CLIP_NAME:
        return
    differ = sorted(k for k, v in toy_settings(cfg.method.name).items() if cfg.value(k) != v)
    if differ:
        LOG.warning("backbone toy-clip with settings made for ViT-B/16 (%s differ from the toy world's); the "
                    "demo's settings for the tiny CLIP: `mmrl toyworld make-tasks DIR` writes "
                    "DIR/settings-%s.yaml, pass it with --config", ", ".join(differ[:4])
                    + (", ..." if len(differ) > 4 else ""), cfg.method.name)


def _realised_shots(splits, shots: int) -> dict[str, Any]:
    """run.json's record of the training images each class really has (``per_class``, by label),
    with a warning when classes have fewer than the ``shots`` asked for (a class with fewer images
    contributes all it has, as in CoOp's sampling)."""
    counts = splits.train_counts()
    short = [c for c, n in zip(splits.classnames, counts) if 0 < shots and n < shots]
    if short:
        LOG.warning("%s: %d of %d classes have fewer training images than the %d shots asked for (fewest: %d, "
                    "e.g. %s); they train on all they have, and run.json records shots_realised",
                    splits.name, len(short), len(counts), shots, min(counts), ", ".join(map(repr, short[:3])))
    return {"min": min(counts), "max": max(counts), "per_class": counts}


def _check_checkpoint_progress(path: Path, epoch: int, step: int, epochs: int, per_epoch: int) -> None:
    """A checkpoint is written after each epoch: it covers 1..E epochs of the run's config and
    at most ``per_epoch`` optimiser steps each; anything else is not this run's checkpoint."""
    if not 1 <= epoch <= epochs:
        raise CorruptFileError(f"{path}: records {epoch} epochs done, but this run trains 1..{epochs} epochs "
                               f"(optim.epochs); {checkpoint_recovery(path)}")
    if not 0 <= step <= epoch * per_epoch:
        raise CorruptFileError(f"{path}: records {step} optimiser steps after {epoch} epochs, but this run makes "
                               f"{per_epoch} steps per epoch (at most {epoch * per_epoch}); "
                               f"{checkpoint_recovery(path)}")


def _train_epochs(cfg: RunConfig, tr: _Training, files: rd.RunFiles, info: rd.RunInfo, device: torch.device, precision: str,
                  progress: bool | None, on_epoch_end: Callable[[dict[str, Any]], None] | None,
                  dinfo: ddp_util.DistInfo) -> None:
    """Epochs ``tr.start_epoch .. E - 1``, each followed by a checkpoint and a run.json update."""
    E = cfg.optim.epochs
    tty = use_tty_progress(progress) and dinfo.is_main
    timings = info.timings
    train_s = float(timings.get("train_s", 0.0))
    with files.metrics(tr.start_epoch if tr.resumed else None, tr.step):
        for epoch in range(tr.start_epoch, E):
            t_epoch = time.time()
            lr = lr_at_epoch(epoch, cfg.optim)
            mean = _run_epoch(cfg, tr, files, epoch, lr, device, precision, tty, dinfo)
            files.checkpoint(epoch=epoch + 1, step=tr.step, model=tr.model, optimizer=tr.optimizer, scaler=tr.scaler)
            info.epochs_done = epoch + 1  # at once: an interruption from here on resumes after this epoch
            dt = time.time() - t_epoch
            train_s += dt
            timings["train_s"] = round(train_s, 3)
            files.info(info)
            LOG.info("epoch %d/%d: lr %.3g, loss %.4f (ce_class %.4f, ce_rep %.4f, reg_image %.4f, reg_text %.4f),"
                     " train acc %.2f%%, %.1fs", epoch + 1, E, lr, *mean[:5], 100.0 * mean[5], dt)
            if on_epoch_end is not None and dinfo.is_main:
                on_epoch_end({"epoch": epoch + 1, "step": tr.step, "lr": lr, "loss": mean[0],
                              "accuracy": 100.0 * mean[5], "run_dir": str(files.dir)})


def _run_epoch(cfg: RunConfig, tr: _Training, files: rd.RunFiles, epoch: int, lr: float, device: torch.device,
               precision: str, tty: bool, dinfo: ddp_util.DistInfo) -> list[float]:
    """One epoch of optimiser steps; every step's metrics go to metrics.jsonl. Returns the epoch's
    mean ``[loss, ce_class, ce_rep, reg_image, reg_text, accuracy (0..1)]``."""

    E, bs, n = cfg.optim.epochs, cfg.optim.batch_size, len(tr.train_ds)
    for g in tr.optimizer.param_groups:
        g["lr"] = lr
    tr.train_ds.set_epoch(epoch)
    if dinfo.enabled:
        plan = rank_batches(cfg.seed, epoch, n, bs, dinfo.rank, dinfo.world_size)  # this rank's slice of each batch
        batches = [idx for idx, _, _ in plan]
    else:
        batches = epoch_batches(cfg.seed, epoch, n, bs)
    loader = DataLoader(tr.train_ds, batch_sampler=batches, **data.worker_options(cfg.data.num_workers),
                        pin_memory=device.type == "cuda")
    model = tr.model
    model.train()
    model.clip.eval()  # the frozen backbone stays in eval mode
    sums = torch.zeros(6, dtype=torch.float64)
    bar = Progress(loader, total=len(batches), desc=f"epoch {epoch + 1}/{E}", tty=tty)
    for b, (images, labels, _) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        where = f"epoch {epoch + 1}/{E}, batch {b + 1}/{len(batches)}"
        ddp_util.failure_hook(dinfo.rank, tr.step + 1)  # testing aid, inactive unless MMRL_TEST_FAIL_RANK is set

        def one_step():  # ends with the metrics on the CPU: the step's time then covers the device's work
            if dinfo.enabled:
                _, weights, global_batch = plan[b]
                return _ddp_train_step(tr.ddp, tr.optimizer, tr.scaler, images, labels, weights.to(device),
                                       global_batch, info=dinfo, device=device, precision=precision,
                                       step=tr.step + 1, where=where, criterion=tr.criterion)
            out = train_step(model, tr.optimizer, tr.scaler, images, labels, device=device,
                             precision=precision, step=tr.step + 1, where=where, criterion=tr.criterion)
            with torch.no_grad():
                acc = (out.logits.fused.argmax(-1) == labels).float().mean()
                return out, torch.stack([out.total.float(), out.ce_class.float(), out.ce_rep.float(),
                                         out.reg_image.float(), out.reg_text.float(), acc]).cpu().double()

        try:
            out, vals = tr.meter.step(one_step, images) if tr.meter is not None else one_step()
        except NonFiniteLossError as e:
            kept = (f"the last good checkpoint (after epoch {epoch}) is kept in {files.checkpoint_path}"
                    if files.checkpoint_path.is_file() else "no checkpoint was written yet")
            raise NonFiniteLossError(f"{e}; training stopped, {kept}. Try a lower optim.lr or "
                                     "precision fp32/bf16") from None
        tr.step += 1
        sums += vals
        v = vals.tolist()
        files.metric({"step": tr.step, "epoch": epoch, "batch": b, "lr": lr, "loss": v[0], "ce_class": v[1],
                      "ce_rep": v[2], "reg_image": v[3], "reg_text": v[4], "accuracy": 100.0 * v[5]})
        bar.set(loss=v[0], acc=100.0 * v[5])
    return (sums / max(len(batches), 1)).tolist()


def _evaluate_run(cfg: RunConfig, model, run_dir: Path, progress: bool | None,
                  meter: CostMeter | None = None) -> dict[str, Any]:
    """The protocol's end-of-training evaluation (decoupled inference); under torchrun sharded
    over the ranks, with the same results everywhere. Base-to-novel evaluates both halves."""

    model.eval()
    amp.match_eval_precision(model, cfg)

    def run(subsample: str) -> dict[str, Any]:
        request = EvalRequest(cfg.data.dataset, cfg.data.root, subsample, output_dir=run_dir / rd.EVAL_DIR)
        return (meter or CostMeter()).evaluation(lambda: evaluate(model, request, cfg=cfg, progress=progress))

    results: dict[str, Any] = {"protocol": cfg.protocol, "method": cfg.method.name, "dataset": cfg.data.dataset,
                               "shots": cfg.data.shots, "seed": cfg.seed, "backbone": cfg.backbone}
    main = run(cfg.data.subsample)
    results["evaluations"] = {f"{main['dataset']}-{main['subsample']}": main.get("path")}
    if cfg.protocol == "base2novel":
        other = "new" if cfg.data.subsample == "base" else "base"
        second = run(other)
        results["evaluations"][f"{second['dataset']}-{second['subsample']}"] = second.get("path")
        base, novel = (main, second) if other == "new" else (second, main)
        results.update(base=base["accuracy"], novel=novel["accuracy"],
                       hm=harmonic_mean(base["accuracy"], novel["accuracy"]))
    else:
        results["accuracy"] = main["accuracy"]
    return results


__all__ = ["train", "train_step", "optimizer_step", "NonFiniteLossError", "harmonic_mean"]
