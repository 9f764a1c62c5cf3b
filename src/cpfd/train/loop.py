"""The training loop: one readable Lightning Fabric loop, used for teachers and students alike.

Single process on the CPU by default. The same code runs data-parallel::

    cpfd distill DATA --teacher runs/teacher --out runs/cpfd --devices 2            # Fabric starts 2 processes
    torchrun --nproc_per_node 2 -m cpfd distill DATA --teacher runs/teacher ...      # or torchrun, multi-node too

Rows are sharded in ``DistributedSampler``'s seeded order (:class:`~cpfd.train.batches.ShuffledShard`, also with
one process, so shuffling is identical and a resumed run replays exactly); each rank gathers its rows from the
memory-mapped store. Only rank 0 logs and writes checkpoints. Every rank scores the small validation
split itself, so all ranks take the same early-stopping decision without talking to each other.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from lightning_fabric import Fabric
from lightning_fabric.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cpfd.config import TrainConfig
from cpfd.data.prepared import PreparedData
from cpfd.distill.task import DistillTask
from cpfd.evaluate.evaluation import evaluate_logits
from cpfd.io import atomic_write_json, load_weights, save_weights
from cpfd.runs import RunFolder
from cpfd.train.batches import RowDataset, ShuffledShard, passthrough
from cpfd.train.budget import plan_budget

from cpfd.train.checkpoint import load_training_state, save_training_state

LOG_EVERY_S = 30.0


@dataclass
class FitResult:
    best_epoch: int
    best_score: float  # validation mean F1 of the best checkpoint
    best_val_loss: float
    epochs_run: int
    steps_run: int
    stopped_early: bool
    budget: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def make_fabric(cfg: TrainConfig) -> Fabric:
    """CPU single process unless ``devices > 1`` (DDP; gloo on CPU). Under torchrun the process layout comes from
    its environment (LOCAL_WORLD_SIZE processes per node, WORLD_SIZE in all), whatever ``devices`` says."""
    devices, nodes = cfg.devices, 1
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:
        devices = int(os.environ["LOCAL_WORLD_SIZE"])
        nodes = max(1, int(os.environ["WORLD_SIZE"]) // devices)
    strategy = "ddp" if devices * nodes > 1 else "auto"
    fabric = Fabric(accelerator=cfg.accelerator, devices=devices, num_nodes=nodes, strategy=strategy,
                    precision=cfg.precision)
    fabric.launch()
    return fabric


RELEASE_EVERY_PREDICT = 16  # batches of an inference pass between hand-backs of the store pages read


@torch.no_grad()
def predict(model: nn.Module, data: PreparedData, indices: np.ndarray, with_privileged: bool = False,
            batch_size: int = 1024, progress: str | None = None, with_embedding: bool = False) -> dict:
    """Logits (and, with ``with_embedding``, the fused embedding) for ``indices``, scattered into tensors that
    cover every row (zeros elsewhere). The embedding is n × d floats, so only feature distillation asks for it.

    ``with_privileged`` passes the privileged features (the model is a teacher). Runs on the device the model's
    parameters are on; results come back on the CPU. ``progress`` names the pass for a bar (rows/s, ETA) on a
    terminal, or a plain line every LOG_EVERY_S seconds otherwise."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = len(data)
    logits = {t.name: torch.zeros(n, t.n_outputs) for t in data.tasks}
    embedding = None
    # A pass in row order never comes back to the pages behind it: hand them back as it goes.
    dataset = RowDataset(data, indices, with_privileged=with_privileged, release_every=RELEASE_EVERY_PREDICT)
    on_terminal = sys.stderr.isatty()
    bar = tqdm(total=len(indices), desc=progress, unit="row", leave=False, disable=progress is None or not on_terminal,
               dynamic_ncols=True)
    last_line = time.monotonic()
    for start in range(0, len(indices), batch_size):
        batch = to_device(dataset.__getitems__(list(range(start, min(start + batch_size, len(indices))))), device)
        bar.update(len(batch["index"]))
        if progress is not None and not on_terminal and time.monotonic() - last_line >= LOG_EVERY_S:
            print(f"{progress}: {start + len(batch['index'])}/{len(indices)} rows", file=sys.stderr, flush=True)
            last_line = time.monotonic()
        if with_privileged:
            out = model(**batch["student"], privileged=batch["privileged"])
        else:
            out = model(**batch["student"])
        rows = batch["index"].cpu()
        for task, z in out["logits"].items():
            logits[task][rows] = z.float().cpu()
        if with_embedding:
            if embedding is None:
                embedding = torch.zeros(n, out["embedding"].shape[1])
            embedding[rows] = out["embedding"].float().cpu()
    bar.close()
    model.train(was_training)
    data.release_memory()
    return {"logits": logits, "embedding": embedding}


def to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def validation_loss(data: PreparedData, logits: dict[str, torch.Tensor], within: np.ndarray | None = None) -> float:
    """The hard loss on labelled validation rows, averaged per task and summed over tasks (as in training)."""
    total = 0.0
    for task in data.tasks:
        keep = (data.split == "val") & data.label_mask[task.name].numpy()
        if within is not None:
            keep &= within
        rows = torch.from_numpy(np.flatnonzero(keep))
        if len(rows):
            total += float(task.kind.hard_loss(logits[task.name][rows], data.labels[task.name][rows]).mean())
    return total


def fit(fabric: Fabric, task: DistillTask, data: PreparedData, train_idx: np.ndarray, cfg: TrainConfig,
        run: RunFolder, *, resume: bool = False, desc: str = "train", select_within: np.ndarray | None = None,
        score_start: bool = False) -> FitResult:
    """Train ``task.model`` on ``train_idx`` with ``task(batch)["loss"]`` under the budget of
    :mod:`cpfd.train.budget`; the best checkpoint by validation loss (or F1, ``train.select``) is restored.
    ``select_within`` (a row mask) restricts the validation rows that select it (teachers keep a calibration slice).
    ``score_start``: the untrained weights are a candidate too (a model started at a fitted solution,
    ``model.wide_init``), scored before the first step and recorded in the history as epoch -1.

    Only ``task.model`` is set up by Fabric (wrapped for DDP); a teacher inside the task never is.
    """
    budget = plan_budget(cfg, len(train_idx), fabric.world_size)
    val_idx = data.indices("val", labelled_only=True)
    if select_within is not None:
        val_idx = val_idx[select_within[val_idx]]
    optimizer = torch.optim.AdamW(
        [p for p in task.model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: budget.lr_factor(step, cfg.schedule))
    state = {"epoch": -1, "step": 0, "best_key": math.inf, "best_epoch": -1, "best_step": 0, "best_f1": float("nan"),
             "best_val_loss": math.inf, "history": []}
    if resume and run.last_state.exists():
        state, weights = load_training_state(run.last_state, optimizer, scheduler)
        task.model.load_state_dict(weights)
        partial = state.get("in_epoch")
        fabric.print(f"resuming {run.path} at epoch {state['epoch'] + 2}"
                     + (f", after its first {partial['steps']} steps" if partial else ""))
    history = state["history"]
    task.model, optimizer = fabric.setup(task.model, optimizer)
    with_privileged = task.needs_privileged

    dataset = RowDataset(data, train_idx, with_privileged=with_privileged, release_every=cfg.release_pages_every)
    sampler = ShuffledShard(len(dataset), fabric.world_size, fabric.global_rank, cfg.seed,
                            block_rows=cfg.shuffle_block_rows)

    def loader(skip_batches: int) -> DataLoader:
        # Its own generator: creating an iterator draws a seed, which must not shift the global RNG that dropout
        # uses (a mid-epoch resume creates it at another point of that stream than the uninterrupted run).
        return DataLoader(dataset, batch_size=budget.batch_size, sampler=sampler.skipping(skip_batches * budget.batch_size),
                          collate_fn=passthrough, num_workers=cfg.num_workers,
                          generator=torch.Generator().manual_seed(cfg.seed))

    # Not fabric.setup_dataloaders: its wrapper calls sampler.set_epoch(number of passes so far), which would
    # replay epoch 0's order after a resume; we set the epoch ourselves and move batches with fabric.to_device.
    loggers = [CSVLogger(run.logs, name="csv"), TensorBoardLogger(run.logs, name="tensorboard")]
    # A bar only on a terminal; elsewhere (CI, a log file, a pipe) a plain line every LOG_EVERY_S seconds says where
    # training is, and with ``progress`` every epoch's summary too.
    show = cfg.progress and fabric.is_global_zero and sys.stderr.isatty()
    plain = fabric.is_global_zero and not show
    last_line = time.monotonic()

    last_save = time.monotonic()

    def checkpoint_due(global_step: int) -> bool:
        nonlocal last_save
        by_steps = cfg.checkpoint_every_steps > 0 and global_step % cfg.checkpoint_every_steps == 0
        by_time = cfg.checkpoint_every_minutes > 0 and time.monotonic() - last_save >= 60 * cfg.checkpoint_every_minutes
        if by_steps or by_time:
            last_save = time.monotonic()
        return by_steps or by_time

    def score() -> tuple[dict, float, float]:
        preds = predict(task.model, data, val_idx, with_privileged=task.model_takes_privileged)
        val = evaluate_logits(data, preds["logits"], eval_split="val", tune_split="val", by_group=False,
                              within=select_within)
        val_loss = validation_loss(data, preds["logits"], select_within)
        return val, val_loss, (val_loss if cfg.select == "val_loss" else -val["mean_f1"])

    if score_start and state["epoch"] == -1 and not history:
        val, val_loss, key = score()
        state |= {"best_key": key, "best_f1": val["mean_f1"], "best_val_loss": val_loss}
        history.append({"val/loss": val_loss, "val/mean_f1": val["mean_f1"], "epoch": -1, "step": 0})
        if fabric.is_global_zero:
            save_weights(unwrap(task.model), run.best)
        if plain:
            fabric.print(f"{desc} start: val loss {val_loss:.4f} val F1 {val['mean_f1']:.4f}", flush=True)

    stopped_early = False
    step = state["step"]
    epoch = state["epoch"]
    for epoch in range(state["epoch"] + 1, budget.epochs):
        sampler.set_epoch(epoch)
        task.train()
        partial = state.get("in_epoch") if (state.get("in_epoch") or {}).get("epoch") == epoch else None
        sums: dict[str, float] = dict(partial["sums"]) if partial else {}
        steps, rows, tic = (partial["steps"], partial["rows"], time.perf_counter()) if partial else (0, 0, time.perf_counter())
        epoch_loader, rows_before = loader(steps), rows
        bar = tqdm(total=len(sampler), initial=min(steps * budget.batch_size, len(sampler)),
                   desc=f"{desc} {epoch + 1}/{budget.epochs}", unit="row", leave=False, disable=not show,
                   dynamic_ncols=True)
        for batch in epoch_loader:
            out = task(fabric.to_device(batch))
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(out["loss"])
            optimizer.step()
            scheduler.step()
            for key, value in out.items():
                if key != "logits":
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
            steps += 1
            rows += len(batch["index"])
            bar.update(len(batch["index"]))
            bar.set_postfix(loss=f"{float(out['loss'].detach()):.4f}")
            if plain and time.monotonic() - last_line >= LOG_EVERY_S:
                rate = (rows - rows_before) * fabric.world_size / max(time.perf_counter() - tic, 1e-9)
                total = len(sampler) * fabric.world_size
                done = min(rows * fabric.world_size, total)
                fabric.print(f"{desc} {epoch + 1}/{budget.epochs}: {done}/{total} rows ({rate:.0f} rows/s, ETA "
                             f"{(total - done) / max(rate, 1e-9):.0f} s)", flush=True)
                last_line = time.monotonic()
            if checkpoint_due(step + steps) and steps < len(epoch_loader) + (partial or {}).get("steps", 0):
                # Mid-epoch: the same one-file state, plus where in this epoch's order training stands.
                state["in_epoch"] = {"epoch": epoch, "steps": steps, "rows": rows, "sums": sums}
                if fabric.is_global_zero:
                    save_training_state(run.last_state, optimizer, state | {"history": history}, scheduler,
                                        unwrap(task.model).state_dict())
        bar.close()
        step += steps
        elapsed = time.perf_counter() - tic
        data.release_memory()  # the pages this epoch read; the next epoch maps what it needs again

        val, val_loss, key = score()
        record = {f"train/{k}": v / max(steps, 1) for k, v in sums.items()}
        record |= {"val/loss": val_loss, "val/mean_f1": val["mean_f1"], "epoch": epoch, "step": step,
                   "lr": scheduler.get_last_lr()[0], "rows_per_s": (rows - rows_before) * fabric.world_size / max(elapsed, 1e-9)}
        record |= {f"val/f1/{t}": m["f1"] for t, m in val["tasks"].items()}
        history.append(record)
        if fabric.is_global_zero:
            for logger in loggers:
                logger.log_metrics(record, step=step)
        improved = key < state["best_key"]
        if improved:
            state |= {"best_key": key, "best_epoch": epoch, "best_step": step, "best_f1": val["mean_f1"],
                      "best_val_loss": val_loss}
            if fabric.is_global_zero:
                save_weights(unwrap(task.model), run.best)
        state |= {"epoch": epoch, "step": step, "history": history, "in_epoch": None}
        if fabric.is_global_zero:
            save_weights(unwrap(task.model), run.last)
            save_training_state(run.last_state, optimizer, state, scheduler, unwrap(task.model).state_dict())
        line = (f"{desc} epoch {epoch + 1}/{budget.epochs} (step {step}/{budget.total_steps}): loss "
                f"{record.get('train/loss', float('nan')):.4f} val loss {val_loss:.4f} val F1 "
                f"{val['mean_f1']:.4f}{' *' if improved else ''} ({record['rows_per_s']:.0f} rows/s)")
        if show:
            tqdm.write(line)
        elif plain and (cfg.progress or time.monotonic() - last_line >= LOG_EVERY_S):
            fabric.print(line, flush=True)
            last_line = time.monotonic()
        if step - state["best_step"] >= budget.patience_steps and step >= budget.min_steps:
            stopped_early = True
            break
    # Replicas must hold identical weights; a mismatch means a broken data-parallel setup, so say it loudly.
    checksums = fabric.all_gather(_checksum(unwrap(task.model))).reshape(-1).tolist()
    if len(set(checksums)) > 1:
        fabric.print(f"warning: ranks disagree on the final weights: {checksums}")
    fabric.barrier()
    if fabric.is_global_zero:
        for logger in loggers:
            logger.finalize("success")
    task.model = unwrap(task.model)
    if run.best.exists():
        load_weights(task.model, run.best)
    if fabric.is_global_zero:
        atomic_write_json(run.history_file, {"epochs": history, "budget": budget.to_json(),
                                             "rank_weight_checksums": checksums, "world_size": fabric.world_size})
    return FitResult(state["best_epoch"], state["best_f1"], state["best_val_loss"], epoch + 1, step, stopped_early,
                     budget.to_json(), history)


def _checksum(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under Fabric's (and DDP's) wrappers, for saving and loading weights."""
    inner = getattr(model, "module", model)
    return getattr(inner, "module", inner)
