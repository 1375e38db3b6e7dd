"""The plumbing around every train.py's loop, written once: the run's start, the full training state, resume,
the agreed stop decision, guarded checkpoints, non-finite losses, and the run's end.

Plain functions and small classes with explicit arguments; the loop itself stays in each train.py:

    step = training.resume(cfg, env, "DCGAN", modules, optimizers, batches)
    log = training.start_run(cfg, env, step, model_config, precision, data)
    saver = training.Saver(cfg, env, "DCGAN", model_config, modules, optimizers, batches)
    guard = training.NonFiniteGuard(env, log)
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            ...                                      # forward, loss
            if guard.finite(step, loss=loss):        # a nan / inf loss skips the update (agreed by all ranks)
                opt.step()
            step += 1
            stopping = stop.poll()                   # a signal on any rank, or --minutes: every rank stops
            ...                                      # samples when due or stopping
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    return training.finish(step, cfg, env, saver, stop, log)

Exit codes (a scheduler can tell them apart): 0 finished or the --minutes budget reached; 2 a usage, data or
checkpoint error (one line); 3 training diverged (NonFiniteGuard); 128 + N stopped by signal N, after the
checkpoint (143 for SIGTERM, 130 for Ctrl-C).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from shared import checkpoint, cli, dist as distributed
from shared.data import BatchIterator, DataError, ImageData
from shared.run import RunLog, save_config

EXIT_DIVERGED = 3
# Flags that may differ on resume; they take their new value (learning rates in the optimizers too). Any other
# difference (network sizes, batch size, dataset, image size, seed, ...) is refused: it would not continue the run.
CHANGEABLE_ON_RESUME = frozenset({"steps", "minutes", "log_every", "sample_every", "ckpt_every", "threads",
                                  "resume", "device", "precision", "download", "wandb", "wandb_project", "out",
                                  "channels_last"})


class TrainingDiverged(Exception):
    """Too many non-finite losses in a row; train.py prints the message and exits with EXIT_DIVERGED."""


def changeable(name: str) -> bool:
    """May flag `name` change on resume? Learning rates (lr, lr_d, lr_g, ...) and CHANGEABLE_ON_RESUME."""
    return name in CHANGEABLE_ON_RESUME or name == "lr" or name.startswith("lr_")


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(accepted, refused): '--flag old -> new' for every flag whose value differs from the checkpoint's."""
    accepted, refused = [], []
    for name in sorted(set(saved) | set(now)):
        if name in saved and name in now and saved[name] != now[name]:
            line = f"--{name.replace('_', '-')} {saved[name]!r} -> {now[name]!r}"
            (accepted if changeable(name) else refused).append(line)
    return accepted, refused


def resume(cfg: Any, env: distributed.Dist, model: str, modules: dict[str, nn.Module],
           optimizers: dict[str, torch.optim.Optimizer], batches: BatchIterator,
           optional: tuple[str, ...] = (), restore: dict[str, Any] | None = None) -> int:
    """Restore the full training state if asked (--resume auto|PATH); returns the step to continue from (0 = a
    fresh run). Flags that differ from the checkpoint's are printed; learning rates and the other changeable
    flags take their new value (in the optimizers too), any other difference raises CheckpointError (exit 2).
    Modules named in `optional` may be absent from the checkpoint (e.g. an EMA copy turned on later). Each key
    of `restore` (a folder's extra state, e.g. {"critic_updates": 0}) is set to the checkpoint's value, if any."""
    if not cfg.resume:
        return 0
    path = checkpoint.latest(cfg.out) if cfg.resume == "auto" else checkpoint.resolve(cfg.resume)
    if path is None:
        return 0  # --resume auto with nothing to resume: a fresh run
    state = checkpoint.load(path, model=model, map_location=env.device)
    accepted, refused = config_changes(state.get("config", {}), dataclasses.asdict(cfg))
    if refused:
        raise checkpoint.CheckpointError(f"cannot resume {path} with other settings: {'; '.join(refused)} "
                                         f"(start a new run with another --out, or drop these flags)")
    if accepted and env.is_main:
        print(f"resuming {path} with new values: {'; '.join(accepted)}", flush=True)
    for name, module in modules.items():
        if name in optional and state.get(name) is None:
            continue
        checkpoint.load_weights(module, state, name, path)
    for name, opt in optimizers.items():
        fresh_lrs = [group["lr"] for group in opt.param_groups]  # built from this run's flags
        if not isinstance(state.get(name), dict):
            raise checkpoint.CheckpointError(f"{path} has no optimizer state {name!r}")
        opt.load_state_dict(state[name])
        for group, lr in zip(opt.param_groups, fresh_lrs):
            group["lr"] = lr
    batches.load_state_dict(state["data"])
    for key in restore or {}:
        if key in state:
            restore[key] = state[key]
    if state.get("world_size", 1) == env.world_size:
        checkpoint.set_rng_state(state["rng"][env.rank])
    else:  # a different process count cannot replay the same noise; continue with fresh, seeded streams
        torch.manual_seed(cfg.seed + env.rank + 1_000_003 * state["step"])
    return int(state["step"])


def start_run(cfg: Any, env: distributed.Dist, step: int, model_config: Any, precision: str,
              data: ImageData) -> RunLog:
    """Write config.json (the flags, the network config, the resolved precision, which data and how much, the CPU
    and the start time, so figures from different machines or sessions are told apart) and
    open the run's log (progress bar, metrics.jsonl, TensorBoard, W&B with --wandb)."""
    config = {**dataclasses.asdict(cfg), "model_config": dataclasses.asdict(model_config),
              "precision_resolved": precision, "world_size": env.world_size,
              "data_source": data.source, "data_size": len(data),
              "cpu": f"{distributed.cpu_model()} | {distributed.bf16_flags()}",
              "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if env.is_main:
        save_config(cfg.out, config)
    log = RunLog(cfg.out, cfg.steps, start_step=step, enabled=env.is_main,
                 wandb_project=cfg.wandb_project if cfg.wandb else None, config=config)
    log.message(f"data: {data.source}")
    return log


def state_dict(cfg: Any, env: distributed.Dist, model: str, step: int, model_config: Any,
               modules: dict[str, nn.Module | None], optimizers: dict[str, torch.optim.Optimizer],
               batches: BatchIterator, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full training state (a checkpoint): every named module and optimizer, the data position, every rank's
    RNG streams (a collective: all ranks call it), the flags, the network config and the library versions."""
    rngs = distributed.gather_objects(checkpoint.rng_state(), env)
    replicas = distributed.gather_objects({name: parameters_digest(m) for name, m in modules.items()
                                           if m is not None}, env)
    return {"model": model, "step": step, "config": dataclasses.asdict(cfg),
            "model_config": dataclasses.asdict(model_config),
            **{name: None if m is None else m.state_dict() for name, m in modules.items()},
            **{name: opt.state_dict() for name, opt in optimizers.items()},
            "data": batches.state_dict(), "rng": rngs, "world_size": env.world_size, "replicas": replicas,
            "versions": checkpoint.versions(), **(extra or {})}


def parameters_digest(module: nn.Module) -> str:
    """sha1 of a module's parameters (names, shapes, exact values). Saved per rank in every checkpoint
    ("replicas"), so anyone can check that data-parallel replicas stayed identical. Buffers are left out: DDP
    broadcasts them from rank 0 before each forward, so after a step each rank holds its own batch statistics."""
    h = hashlib.sha1()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if p.numel() else b"")
    return h.hexdigest()


def non_finite_entries(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state that hold nan or inf."""
    if isinstance(state, torch.Tensor):
        return [prefix] if state.is_floating_point() and not torch.isfinite(state).all() else []
    if isinstance(state, dict):
        return [n for k, v in state.items() if k != "rng" for n in non_finite_entries(v, f"{prefix}.{k}".strip("."))]
    if isinstance(state, (list, tuple)):
        return [n for i, v in enumerate(state) for n in non_finite_entries(v, f"{prefix}.{i}")]
    return []


class Saver:
    """Writes the run's checkpoints (rank 0; every rank takes part in gathering the RNG states), never one with
    non-finite weights: a state holding nan/inf anywhere (weights, buffers, optimizer moments), on any rank,
    cannot heal, so it raises TrainingDiverged (exit 3) and the last good checkpoint stays as it was.
    `extra()` returns a folder's own state to store with every checkpoint (e.g. a counter)."""

    def __init__(self, cfg: Any, env: distributed.Dist, model: str, model_config: Any,
                 modules: dict[str, nn.Module | None], optimizers: dict[str, torch.optim.Optimizer],
                 batches: BatchIterator, log: RunLog | None = None,
                 extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.cfg, self.env, self.model, self.model_config = cfg, env, model, model_config
        self.modules, self.optimizers, self.batches, self.log = modules, optimizers, batches, log
        self.extra = extra
        self.last: Path | None = None  # newest checkpoint written
        self.last_step = -1

    def save(self, step: int, periodic: bool = False, extra: dict[str, Any] | None = None) -> Path | None:
        extra = {**(self.extra() if self.extra else {}), **(extra or {})}
        state = state_dict(self.cfg, self.env, self.model, step, self.model_config, self.modules,
                           self.optimizers, self.batches, extra)
        bad = non_finite_entries({k: v for k, v in state.items() if k not in ("rng", "config")})
        if distributed.all_max([float(bool(bad))], self.env)[0]:
            where = f"{len(bad)} tensors hold nan/inf (first: {bad[0]})" if bad else "another rank's state is not finite"
            if self.log is not None:
                self.log.close()
            raise TrainingDiverged(f"training diverged: at step {step} {where}; no checkpoint written, the last "
                                   f"good one ({self.last or 'none this run'}) is kept: lower --lr")
        if self.env.is_main:
            self.last = checkpoint.save_run_checkpoint(self.cfg.out, state, periodic=periodic)
        self.last_step = step
        distributed.barrier(self.env)  # nobody races ahead of a half-written checkpoint
        return self.last


class NonFiniteGuard:
    """finite(step, loss=...) -> False (skip this update) when a loss is nan or inf on any rank. A loss that is
    non-finite `patience` times in a row (counted per loss name, so a D loss that is nan at every step is caught
    even while G's loss stays finite) raises TrainingDiverged. The decision is agreed by all ranks, so DDP
    replicas never apply different updates."""

    def __init__(self, env: distributed.Dist, log: RunLog | None = None, patience: int = 5) -> None:
        self.env, self.log, self.patience = env, log, patience
        self.counts: dict[str, int] = {}  # loss name -> non-finite values in a row
        self.skipped = 0

    @property
    def in_a_row(self) -> int:
        return max(self.counts.values(), default=0)

    def finite(self, step: int, **losses: torch.Tensor) -> bool:
        """True when every loss is finite on every rank; `step` = steps done before this update."""
        values = [float(v.detach().float()) for v in losses.values()]
        bad_here = [name for name, v in zip(losses, values) if not math.isfinite(v)]
        if distributed.all_max([float(bool(bad_here))], self.env)[0] == 0:
            self.counts.update({name: 0 for name in losses})
            return True
        for name in losses:
            self.counts[name] = self.counts.get(name, 0) + 1
        self.skipped += 1
        what = ", ".join(bad_here) if bad_here else "a loss on another rank"
        if self.log is not None:
            self.log.message(f"warning: step {step + 1}: non-finite {what}; update skipped "
                             f"({self.in_a_row} in a row, {self.patience} stop the run)")
        if self.in_a_row >= self.patience:
            if self.log is not None:
                self.log.close()
            raise TrainingDiverged(f"training diverged: {self.patience} non-finite losses in a row (last at step "
                                   f"{step + 1}, {what}); lower --lr, or resume from an earlier checkpoint "
                                   f"in checkpoints/")
        return False


class Stopper:
    """The agreed decision to stop early: a Ctrl-C / SIGTERM that reached any rank, or the --minutes budget on
    any rank. poll() is a collective (every rank calls it once per step) so all ranks stop at the same step,
    checkpoint together and exit; a rank that decided alone would hang the others in their next all-reduce."""

    def __init__(self, minutes: float, env: distributed.Dist) -> None:
        self.minutes, self.env = minutes, env
        self.start = time.perf_counter()
        self.signals = checkpoint.StopSignal()
        self.reason = ""  # "" while running; "signal N" or "time budget" once stopping
        self.signum = 0

    def __enter__(self) -> "Stopper":
        self.signals.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.signals.__exit__(*exc)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def poll(self) -> bool:
        out_of_time = self.minutes > 0 and self.elapsed > self.minutes * 60
        signum, late = distributed.all_max([float(self.signals.signum), float(out_of_time)], self.env)
        if signum:
            self.signum, self.reason = int(signum), f"signal {signal.Signals(int(signum)).name}"
        elif late:
            self.reason = "time budget"
        return bool(self.reason)


def finish(step: int, cfg: Any, env: distributed.Dist, saver: Saver, stop: Stopper, log: RunLog) -> Path:
    """End of a run: the final checkpoint (unless this step's is written), a summary of where everything is and
    what to run next, the log closed, the process group left; a run stopped by signal N exits 128 + N here,
    after its checkpoint. Call it after the DDP wrappers are deleted."""
    if saver.last_step != step:
        saver.save(step)
    if stop.reason:
        log.message(f"stopped at step {step} ({stop.reason}); checkpoint saved, continue with --resume auto")
    out = Path(cfg.out)
    lines = [f"done: {step:,} steps in {stop.elapsed / 60:.1f} min" + (f" (stopped: {stop.reason})" if stop.reason
                                                                         else ""),
             f"  samples     {log.last_images.get('samples', out / 'samples')}",
             f"  progress    {log.gif or out / 'progress.gif'}",
             f"  checkpoint  {saver.last or out / 'checkpoints' / 'latest.pt'}",
             f"  next        python sample.py --checkpoint {out}   |   python evaluate.py --checkpoint {out}",
             f"  curves      tensorboard --logdir {out}"]
    log.close()  # the progress bar first, so the summary prints below it
    if env.is_main:
        print("\n".join(lines), flush=True)
    distributed.teardown(env)
    if stop.signum:
        raise SystemExit(128 + stop.signum)
    return out


def run_main(main: Any, cfg: Any) -> None:
    """A train.py's `__main__`: main(cfg), with the errors a user can act on as one line and their exit code
    (2: data or checkpoint, EXIT_DIVERGED: non-finite losses)."""
    try:
        main(cfg)
    except (DataError, checkpoint.CheckpointError) as err:
        cli.fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    except TrainingDiverged as err:
        cli.fail(str(err), code=EXIT_DIVERGED)
