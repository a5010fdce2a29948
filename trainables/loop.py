"""The shared training loop for supervised workloads.

A workload's ``build(config, device)`` returns a :class:`Task`; :func:`train_supervised`
runs the trial's optimizer (:mod:`trainables.optimizers`) on it under its learning-rate schedule, evaluates every ``eval_every``
steps, and reports. Losses are accumulated on the device and read back only at eval points,
so a GPU never waits on the host between steps.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from trainables import schedules
from trainables.api import InputError, Report, Status, StopRule, TrialConfig
from trainables.batches import DatasetBatches, TensorBatches, as_batches
from trainables.microbatch import backward_mean
from trainables.optimizers import make_optimizer

__all__ = ["DatasetBatches", "Task", "TensorBatches", "train_supervised"]


@dataclass
class Task:
    """What a supervised workload builds for one trial.

    ``batches``: an iterator of training batches of exactly the trial's batch size, with
    ``state_dict``/``load_state_dict`` (see :class:`TensorBatches`); or a map-style torch
    ``Dataset``, which the loop batches at the trial's batch size (:class:`DatasetBatches`,
    with ``data_workers`` DataLoader processes; None = 0 on CPU, up to 4 on CUDA); or a tuple
    of tensors (made :class:`TensorBatches` on the device). ``loss(model, batch)``:
    mean training loss of a batch (a scalar tensor). ``evaluate(model)``: eval metrics by
    name (e.g. ``eval_loss``, ``eval_accuracy``), computed without gradients.
    ``train_size``: training examples (after the data fraction), for the epoch counter.
    """

    model: torch.nn.Module
    batches: Any
    loss: Callable[[torch.nn.Module, Any], torch.Tensor]
    evaluate: Callable[[torch.nn.Module], dict[str, float]]
    train_size: int
    clip_grad_norm: float = 0.0  # max global gradient norm (0 = no clipping)
    data_workers: int | None = None  # Dataset batches only: DataLoader worker processes


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    # Same seed, same numbers on CPU; on GPU cuDNN autotuning stays on for speed. Only switch
    # deterministic mode off if something turned it on: torch.use_deterministic_algorithms
    # imports torch._inductor (9 s on a 2-core VM), which every fresh trial worker paid.
    if torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(False)


def train_supervised(
    workload, config: TrialConfig, report: Report, state: dict | None = None
) -> None:
    if workload.whole_batches and (config.noise_scale or config.micro_batch_size):
        raise ValueError(
            f"{workload.name} cannot split its batches ({workload.whole_batches}): "
            "set micro_batch_size: 0 and log_noise_scale: false"
        )
    seed_everything(config.seed)
    device = resolve_device(config.device)
    task: Task = workload.build(config, device)
    if isinstance(task.batches, DatasetBatches | TensorBatches):
        batches = task.batches
    elif task.data_workers is not None and not hasattr(task.batches, "__next__"):
        batches = DatasetBatches(task.batches, config.batch_size, config.seed, device,
                                 task.data_workers)  # fmt: skip
    else:
        batches = as_batches(task.batches, config.batch_size, config.seed, device)
    task.batches = batches
    schedule = config.batch_size_schedule
    if schedule:
        from trainables.branching import check_batch_size_schedule

        schedule = check_batch_size_schedule(schedule)
        if config.batch_size != schedule[0][1]:
            raise ValueError(f"batch_size {config.batch_size} must be the batch-size schedule's "
                             f"first, {schedule[0][1]} (the LR is given at it)")  # fmt: skip
        if not hasattr(batches, "set_batch_size"):
            raise InputError(
                f"batch_size_schedule: {workload.name}'s batches "
                f"({type(batches).__name__}) cannot change their batch size; give Task.batches "
                "as tensors, a Dataset, or an iterator with set_batch_size(b)"
            )
    model = task.model.to(device)
    opt = make_optimizer(model.parameters(), config)
    steps_per_epoch = task.train_size / config.batch_size
    noise = None
    if config.noise_scale:
        from trainables.noise_scale import GradientNoiseScale

        noise = GradientNoiseScale()

    # train_time: seconds spent in optimizer steps only (eval excluded), for time-to-target.
    step, ema, initial_loss, wall, train_time = 0, None, None, 0.0, 0.0
    examples, examples_to_target = 0, None  # examples seen: the sum of each step's batch size
    stop_rule = StopRule(config.target)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        task.batches.load_state_dict(state["batches"])
        step, ema, initial_loss, wall = (
            state["step"],
            state["ema"],
            state["initial_loss"],
            state["wall"],
        )
        train_time = state.get("train_time", 0.0)  # absent in checkpoints of older versions
        # A schedule's position is the examples seen. Without a schedule, examples stay step x
        # batch_size, as a branch's always were (its own batch size from the base run's start).
        examples = (
            state["examples"] if schedule and "examples" in state else step * config.batch_size
        )
        examples_to_target = state.get("examples_to_target")
        torch.set_rng_state(state["rng"])  # dropout and other in-model randomness resume exactly
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if noise is not None and "noise" in state:
            noise.load_state_dict(state["noise"])
        if "stop_rule" in state:
            stop_rule.load_state_dict(state["stop_rule"])

    model.train()
    t0 = time.perf_counter() - wall
    window_start = time.perf_counter()  # start of the training steps since the last eval
    loss_sum = torch.zeros((), device=device)
    n_in_window = 0
    evals_done = 0
    batch_size = config.batch_size

    def budget_spent() -> bool:
        return bool(config.max_examples) and examples >= config.max_examples

    while step < config.max_steps and not budget_spent():
        lr = schedules.lr_at(step, config.lr, config.schedule, steps_per_epoch, config.max_steps)
        if schedule:
            from trainables.branching import batch_size_at, scaled_lr

            b = batch_size_at(schedule, examples)
            if b != batch_size:
                task.batches.set_batch_size(b)
                batch_size = b
            lr = scaled_lr(lr, batch_size / config.batch_size, config.lr_rule)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = next(task.batches)
        opt.zero_grad(set_to_none=True)
        if noise is None:
            loss = backward_mean(model, task.loss, batch, config.micro_batch_size)
        else:
            loss = noise.backward(model, task.loss, batch, config.micro_batch_size)
        if task.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), task.clip_grad_norm)
        opt.step()
        step += 1
        examples += batch_size
        loss_sum += loss.detach()
        n_in_window += 1
        if initial_loss is None:
            initial_loss = float(loss.detach())

        branch_point = step in config.checkpoint_at  # a base run's branch point: report there
        if (step % config.eval_every and step < config.max_steps and not branch_point
                and not budget_spent()):  # fmt: skip
            continue
        train_loss = float(loss_sum) / n_in_window  # a host sync: the steps have finished
        train_time += time.perf_counter() - window_start
        loss_sum.zero_()
        n_in_window = 0
        ema = (
            train_loss
            if ema is None
            else config.ema_beta * ema + (1 - config.ema_beta) * train_loss
        )
        diverged = not math.isfinite(train_loss) or train_loss > config.divergence_factor * max(
            initial_loss, 1e-12
        )
        metrics: dict[str, Any] = {}
        if not diverged:
            model.eval()
            with torch.no_grad():
                metrics.update(task.evaluate(model))
            model.train()
            diverged = any(not math.isfinite(v) for v in metrics.values())
        metrics.update(
            step=step,
            examples=examples,
            epoch=examples / task.train_size,
            lr=lr,
            train_loss=train_loss,
            train_loss_ema=ema,
            wall_time=time.perf_counter() - t0,
            train_time=train_time,
        )
        if schedule:
            metrics["batch_size"] = batch_size  # that of the last step
        if noise is not None:
            metrics.update(noise.metrics())
        stop_rule.update(None if diverged else metrics.get(config.target.metric), step)
        if stop_rule.reached_at == step and examples_to_target is None:
            examples_to_target = examples
        status = stop_rule.status(step, config, diverged, budget_spent())
        metrics["status"] = str(status)
        if status == Status.REACHED:
            metrics["steps_to_target"] = stop_rule.reached_at
            if schedule:
                metrics["examples_to_target"] = examples_to_target
        evals_done += 1
        checkpoint = None
        if (branch_point and status != Status.DIVERGED) or (
            status == Status.RUNNING
            and config.checkpoint_every
            and evals_done % config.checkpoint_every == 0
        ):
            # A snapshot, not references: training goes on mutating the live tensors.
            checkpoint = copy.deepcopy(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "batches": task.batches.state_dict(),
                    "step": step,
                    "ema": ema,
                    "initial_loss": initial_loss,
                    "wall": metrics["wall_time"],
                    "train_time": train_time,
                    "examples": examples,  # the batch-size schedule's position
                    "examples_to_target": examples_to_target,
                    "rng": torch.get_rng_state(),
                    "stop_rule": stop_rule.state_dict(),
                }
            )
            if device.type == "cuda":
                checkpoint["cuda_rng"] = torch.cuda.get_rng_state_all()
            if noise is not None:
                checkpoint["noise"] = noise.state_dict()
        report(metrics, checkpoint)
        if status != Status.RUNNING:
            return
        window_start = time.perf_counter()  # eval, checkpoint and report are not training
