"""Training: one run from a RunConfig to a finished run directory.

The trajectory is a function of the config alone: the model is initialised from
``torch.manual_seed(seed)``, each epoch's batch order is one permutation seeded from
(seed, epoch) (:func:`mmrl.engine.schedule.epoch_batches`) and each image's augmentation is
seeded from (seed, epoch, index) (:class:`mmrl.data.ImageDataset`); the learning rate is a
function of the epoch (:func:`mmrl.engine.schedule.lr_at_epoch`). A checkpoint written
atomically after every epoch therefore lets a crashed (or ``kill -9``-ed) run continue to
bit-identical weights on the CPU.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from mmrl.config import ConfigError, RunConfig, canonical_dataset, load_config, validate
from mmrl.engine import rundir as rd
from mmrl.engine.checkpoint import (load_checkpoint, save_adapter, save_checkpoint, set_rng_state,
                                    write_json_atomic)
from mmrl.engine.runtime import (Progress, autocast, load_backbone_checked, log_to_file, resolve_device,
                                 resolve_precision, use_tty_progress)
from mmrl.engine.schedule import epoch_batches, lr_at_epoch

LOG = logging.getLogger("mmrl")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; the run stopped and kept its last good checkpoint."""


def harmonic_mean(a: float, b: float) -> float:
    """HM = 2ab / (a + b) (0 when both are 0)."""
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def _read_results(run_dir: Path) -> dict | None:
    p = run_dir / rd.RESULTS_FILE
    if not p.is_file():
        return None
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def _truncate_metrics(path: Path, keep_before_epoch: int) -> None:
    """Keep the metrics of the epochs before ``keep_before_epoch`` (those a checkpoint covers)."""
    if not path.is_file():
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if json.loads(line)["epoch"] < keep_before_epoch:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError):
                break  # a line cut by a crash: everything after it is dropped too
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(path)


def train_step(model, optimizer, scaler, images: torch.Tensor, labels: torch.Tensor, *, device: torch.device,
               precision: str, step: int, where: str, **loss_kw):
    """One optimiser step on one batch; returns the LossOutput.

    ``loss_kw`` goes to ``model.loss`` (data parallelism passes the global ``batch_size``,
    per-sample ``weights`` and ``world_size`` there). Raises NonFiniteLossError BEFORE any
    parameter changes if the loss is not finite.
    """
    with autocast(device, precision):
        out = model.loss(images, labels, **loss_kw)
    total = out.total.float()
    if not torch.isfinite(total):
        raise NonFiniteLossError(f"non-finite training loss ({total.item()}) at step {step} ({where})")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    return out


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
    diffs = rd.config_differences(stored, cfg)
    started = (run_dir / rd.CHECKPOINT_FILE).is_file() or (run_dir / rd.ADAPTER_FILE).is_file()
    if diffs and not started:
        LOG.warning("%s: replacing a run that never completed an epoch (%s)", run_dir, "; ".join(diffs))
        return None
    if diffs:
        raise ConfigError(f"{run_dir} already holds a run with a different configuration ("
                          + "; ".join(diffs) + "); choose another --output, or delete that directory to start over")
    info = rd.read_run_info(run_dir) or {}
    results = _read_results(run_dir)
    if info.get("status") == "finished" and results is not None and (run_dir / rd.ADAPTER_FILE).is_file():
        return results
    return None


def train(cfg: RunConfig, *, progress: bool | None = None,
          on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one run and evaluate it as its protocol says; returns the results dict.

    The run directory is ``cfg.run_dir()``. If it already holds this run (same config up
    to paths/device/eval settings): a finished run returns its stored results, an
    unfinished one resumes from its last checkpoint. A different config there is an error.

    Args:
        cfg: the resolved configuration (see :func:`mmrl.config.resolve_config`).
        progress: tqdm bars (True), plain periodic log lines (False) or auto (None: bars on a TTY).
        on_epoch_end: called after each epoch's checkpoint with
            ``{"epoch", "step", "lr", "loss", "accuracy", "run_dir"}`` (``epoch`` = epochs done).
    Returns:
        ``{"protocol", "method", "dataset", ..., "accuracy"}`` or, for base-to-novel,
        ``{"base", "novel", "hm"}``; also written to ``RUN_DIR/results.json``.
    Raises:
        ConfigError: before any work, for invalid settings; NonFiniteLossError: the loss
        became NaN/inf (the run is marked failed, the last good checkpoint kept).
    """
    cfg = copy.deepcopy(cfg)
    cfg.data.dataset = canonical_dataset(cfg.data.dataset) if cfg.data.dataset else cfg.data.dataset
    validate(cfg)
    if cfg.protocol == "base2novel" and cfg.data.subsample == "all":
        raise ConfigError("protocol base2novel trains on base (or new) classes: data.subsample must be 'base' "
                          "or 'new', not 'all'")
    run_dir = cfg.run_dir()
    cfg.output = str(run_dir)
    done = _prepare_run_dir(cfg, run_dir)
    if done is not None:
        LOG.info("%s: already finished; results: %s", run_dir, _results_line(done))
        return done
    # settings that need the backbone are checked before anything is written
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    backbone = load_backbone_checked(cfg.backbone, device=device)
    try:
        cfg.method.validate(backbone.vision_layers, backbone.text_layers)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    run_dir.mkdir(parents=True, exist_ok=True)
    rd.write_config(run_dir, cfg)
    old = rd.read_run_info(run_dir) or {}
    info = rd.new_run_info(cfg, status="running", started=old.get("started") or rd.now_iso(),
                           attempts=int(old.get("attempts", 0)) + 1)
    info["timings"] = {k: v for k, v in (old.get("timings") or {}).items() if k == "train_s"}
    rd.write_run_info(run_dir, info)
    t_start = time.time()
    with log_to_file(run_dir / rd.LOG_FILE):
        try:
            results = _train_and_evaluate(cfg, run_dir, info, backbone, device, precision, progress, on_epoch_end)
        except BaseException as e:
            info.update(status="failed", error=f"{type(e).__name__}: {e}", failed=rd.now_iso())
            rd.write_run_info(run_dir, info)
            LOG.error("run failed: %s: %s", type(e).__name__, e)
            raise
        info.update(status="finished", finished=rd.now_iso())
        info["timings"]["total_s"] = round(time.time() - t_start, 3)  # this attempt's wall time
        info.pop("error", None)
        rd.write_run_info(run_dir, info)
        ckpt = run_dir / rd.CHECKPOINT_FILE
        if ckpt.is_file():
            ckpt.unlink()  # adapter.safetensors holds the final weights
        LOG.info("finished %s: %s", run_dir, _results_line(results))
    return results


def _results_line(r: dict) -> str:
    if "hm" in r:
        return f"base {r['base']:.2f}%, novel {r['novel']:.2f}%, HM {r['hm']:.2f}%"
    return f"accuracy {r['accuracy']:.2f}%"


def _train_and_evaluate(cfg: RunConfig, run_dir: Path, info: dict, backbone, device: torch.device, precision: str,
                        progress: bool | None, on_epoch_end: Callable[[dict[str, Any]], None] | None
                        ) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from mmrl import data
    from mmrl.engine.evaluator import evaluate
    from mmrl.models import MMRL

    t_setup = time.time()
    LOG.info("run %s: %s, %s, %s, %d shots, seed %d, backbone %s, device %s, precision %s", run_dir,
             cfg.method.name, cfg.protocol, cfg.data.dataset, cfg.data.shots, cfg.seed, cfg.backbone, device,
             precision)
    data.set_random_seed(cfg.seed)
    splits = data.prepare_splits(cfg.data.dataset, cfg.data.root, shots=cfg.data.shots, seed=cfg.data_seed,
                                 subsample=cfg.data.subsample, split_file=cfg.data.split_file,
                                 cache_dir=cfg.data.cache_dir, template=cfg.data.template)
    if splits.test_only or not splits.train:
        raise data.DataError(f"{splits.name} has no training images (test-only dataset?); train on a dataset "
                             "with a train split")
    data.write_split_file(splits, run_dir / rd.SPLIT_FILE)
    LOG.info("%s", splits.summary())

    torch.manual_seed(cfg.seed)  # model init depends on the seed only
    model = MMRL(backbone, dataclasses.replace(cfg.method))
    info["trainable_parameters"] = model.num_trainable_parameters()
    info["device"], info["precision"] = str(device), precision
    rd.write_run_info(run_dir, info)
    model.set_classes(splits.classnames, splits.template)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr_at_epoch(0, cfg.optim), betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    ckpt_path = run_dir / rd.CHECKPOINT_FILE
    metrics_path = run_dir / rd.METRICS_FILE
    start_epoch = step = 0
    if ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path)
        model.load_adapter_state_dict(ck.adapter)
        optimizer.load_state_dict(ck.optimizer)
        if ck.scaler and scaler.is_enabled():
            scaler.load_state_dict(ck.scaler)
        set_rng_state(ck.rng_tensors, ck.rng_json)
        start_epoch, step = ck.epoch, ck.step
        LOG.info("resuming from %s: %d of %d epochs done (step %d)", ckpt_path, start_epoch, cfg.optim.epochs, step)
        _truncate_metrics(metrics_path, start_epoch)
    elif metrics_path.exists():
        metrics_path.unlink()

    train_ds = data.ImageDataset(splits.train, data.build_transform(True, backbone.image_size), seed=cfg.seed,
                                 skip_bad=cfg.data.skip_bad_images)
    n = len(train_ds)
    if n == 0:
        raise data.DataError(f"{splits.name}: no readable training images")
    E, bs = cfg.optim.epochs, cfg.optim.batch_size
    tty = use_tty_progress(progress)
    timings = info.setdefault("timings", {})
    timings["setup_s"] = round(time.time() - t_setup, 3)
    train_s = float(timings.get("train_s", 0.0))
    with open(metrics_path, "a", encoding="utf-8") as metrics:
        for epoch in range(start_epoch, E):
            t_epoch = time.time()
            lr = lr_at_epoch(epoch, cfg.optim)
            for g in optimizer.param_groups:
                g["lr"] = lr
            train_ds.set_epoch(epoch)
            batches = epoch_batches(cfg.seed, epoch, n, bs)
            loader = DataLoader(train_ds, batch_sampler=batches, num_workers=cfg.data.num_workers,
                                pin_memory=device.type == "cuda")
            model.train()
            model.clip.eval()  # the frozen backbone stays in eval mode
            sums = torch.zeros(6, dtype=torch.float64)
            bar = Progress(loader, total=len(batches), desc=f"epoch {epoch + 1}/{E}", tty=tty)
            for b, (images, labels, _) in enumerate(bar):
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                where = f"epoch {epoch + 1}/{E}, batch {b + 1}/{len(batches)}"
                try:
                    out = train_step(model, optimizer, scaler, images, labels, device=device, precision=precision,
                                     step=step + 1, where=where)
                except NonFiniteLossError as e:
                    kept = (f"the last good checkpoint (after epoch {epoch}) is kept in {ckpt_path}"
                            if ckpt_path.is_file() else "no checkpoint was written yet")
                    raise NonFiniteLossError(f"{e}; training stopped, {kept}. Try a lower optim.lr or "
                                             "precision fp32/bf16") from None
                step += 1
                with torch.no_grad():
                    acc = (out.logits.fused.argmax(-1) == labels).float().mean()
                    vals = torch.stack([out.total.float(), out.ce_class.float(), out.ce_rep.float(),
                                        out.reg_image.float(), out.reg_text.float(), acc]).cpu().double()
                sums += vals
                v = vals.tolist()
                metrics.write(json.dumps({"step": step, "epoch": epoch, "batch": b, "lr": lr, "loss": v[0],
                                          "ce_class": v[1], "ce_rep": v[2], "reg_image": v[3], "reg_text": v[4],
                                          "accuracy": 100.0 * v[5]}) + "\n")
                metrics.flush()
                bar.set(loss=v[0], acc=100.0 * v[5])
            nb = max(len(batches), 1)
            mean = (sums / nb).tolist()
            save_checkpoint(ckpt_path, epoch=epoch + 1, step=step, model=model, optimizer=optimizer, scaler=scaler)
            dt = time.time() - t_epoch
            train_s += dt
            timings["train_s"] = round(train_s, 3)
            info["epochs_done"] = epoch + 1
            rd.write_run_info(run_dir, info)
            LOG.info("epoch %d/%d: lr %.3g, loss %.4f (ce_class %.4f, ce_rep %.4f, reg_image %.4f, reg_text %.4f),"
                     " train acc %.2f%%, %.1fs", epoch + 1, E, lr, *mean[:5], 100.0 * mean[5], dt)
            if on_epoch_end is not None:
                on_epoch_end({"epoch": epoch + 1, "step": step, "lr": lr, "loss": mean[0],
                              "accuracy": 100.0 * mean[5], "run_dir": str(run_dir)})

    save_adapter(model.adapter_state_dict(), run_dir / rd.ADAPTER_FILE,
                 metadata={"method": model.settings(), "backbone": cfg.backbone, "dataset": cfg.data.dataset,
                           "protocol": cfg.protocol, "shots": cfg.data.shots, "seed": cfg.seed})

    t_eval = time.time()
    model.eval()
    eval_kw = dict(cfg=cfg, output_dir=run_dir / rd.EVAL_DIR, progress=progress)
    results: dict[str, Any] = {"protocol": cfg.protocol, "method": cfg.method.name, "dataset": cfg.data.dataset,
                               "shots": cfg.data.shots, "seed": cfg.seed, "backbone": cfg.backbone}
    main = evaluate(model, cfg.data.dataset, cfg.data.root, cfg.data.subsample, **eval_kw)
    results["evaluations"] = {f"{main['dataset']}-{main['subsample']}": main.get("path")}
    if cfg.protocol == "base2novel":
        other = "new" if cfg.data.subsample == "base" else "base"
        second = evaluate(model, cfg.data.dataset, cfg.data.root, other, **eval_kw)
        results["evaluations"][f"{second['dataset']}-{second['subsample']}"] = second.get("path")
        base, novel = (main, second) if other == "new" else (second, main)
        results.update(base=base["accuracy"], novel=novel["accuracy"],
                       hm=harmonic_mean(base["accuracy"], novel["accuracy"]))
    else:
        results["accuracy"] = main["accuracy"]
    timings["eval_s"] = round(time.time() - t_eval, 3)
    write_json_atomic(results, run_dir / rd.RESULTS_FILE)
    return results


__all__ = ["train", "train_step", "NonFiniteLossError", "harmonic_mean"]
