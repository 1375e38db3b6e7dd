"""shared.training: resume's settings check, the non-finite guard, guarded checkpoints, the agreed stop, exit codes."""
import dataclasses
import json
import os
import signal
import socket
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from shared import checkpoint, cli, dist as distributed, training
from shared.data import BatchIterator, ImageData
from shared.run import RunLog

ONE = distributed.Dist(rank=0, world_size=1, device=torch.device("cpu"))


@dataclass
class ToyConfig(cli.RunConfig):
    width: int = 4  # toy width
    lr_d: float = 0.0  # a second learning rate
    beta1: float = 0.5  # Adam beta1


@dataclass
class ToyNet:
    width: int = 4


def toy_data(n: int = 16) -> ImageData:
    return ImageData(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64), [])


def toy_parts(cfg: ToyConfig):
    torch.manual_seed(0)
    net = torch.nn.Linear(cfg.width, 1)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    return {"net": net}, {"opt": opt}, BatchIterator(toy_data(), 4, seed=cfg.seed)


def save_toy_run(tmp_path, **overrides) -> ToyConfig:
    cfg = ToyConfig(out=str(tmp_path / "run"), **overrides)
    modules, optimizers, batches = toy_parts(cfg)
    modules["net"](torch.ones(2, cfg.width)).sum().backward()
    optimizers["opt"].step()
    training.Saver(cfg, ONE, "Toy", ToyNet(cfg.width), modules, optimizers, batches).save(7)
    return cfg


def test_resume_takes_a_new_learning_rate_into_the_optimizer(tmp_path, capsys):
    cfg = save_toy_run(tmp_path, lr=2e-4)
    new = dataclasses.replace(cfg, lr=1e-3, steps=50, resume="auto")
    modules, optimizers, batches = toy_parts(new)
    restore = {"world_size": None, "absent": "kept"}
    assert training.resume(new, ONE, "Toy", modules, optimizers, batches, restore=restore) == 7
    assert restore == {"world_size": 1, "absent": "kept"}
    assert optimizers["opt"].param_groups[0]["lr"] == 1e-3
    assert optimizers["opt"].state[modules["net"].weight]["step"] == 1  # the Adam moments came back
    out = capsys.readouterr().out
    assert "--lr 0.0002 -> 0.001" in out and "--steps 3000 -> 50" in out


@pytest.mark.parametrize("change", [{"batch_size": 16}, {"width": 8}, {"seed": 1}, {"beta1": 0.9},
                                    {"dataset": "shapes"}, {"image_size": 64}])
def test_resume_refuses_settings_that_would_not_continue_the_run(tmp_path, change):
    cfg = save_toy_run(tmp_path)
    new = dataclasses.replace(cfg, resume="auto", **change)
    modules, optimizers, batches = toy_parts(dataclasses.replace(new, width=cfg.width))
    with pytest.raises(checkpoint.CheckpointError) as e:
        training.resume(new, ONE, "Toy", modules, optimizers, batches)
    assert f"--{next(iter(change)).replace('_', '-')}" in str(e.value) and "\n" not in str(e.value)


def test_changeable_flags():
    assert all(training.changeable(n) for n in ("lr", "lr_d", "lr_g", "steps", "minutes", "log_every", "threads"))
    assert not any(training.changeable(n) for n in ("batch_size", "seed", "dataset", "image_size", "g_width",
                                                    "n_critic", "beta1"))


def test_guard_skips_non_finite_losses_and_stops_after_patience(tmp_path):
    log = RunLog(tmp_path, 10)
    guard = training.NonFiniteGuard(ONE, log, patience=3)
    assert guard.finite(0, loss=torch.tensor(1.0))
    assert not guard.finite(1, loss=torch.tensor(float("nan")))
    assert not guard.finite(2, loss=torch.tensor(float("inf")), other=torch.tensor(0.0))
    assert guard.finite(3, loss=torch.tensor(0.5))  # a finite loss resets the count
    assert not guard.finite(4, loss=torch.tensor(float("nan")))
    assert not guard.finite(5, loss=torch.tensor(float("nan")))
    with pytest.raises(training.TrainingDiverged, match="3 non-finite losses in a row"):
        guard.finite(6, loss=torch.tensor(float("nan")))
    log.close()
    assert guard.skipped == 5


def test_guard_counts_each_loss_on_its_own():
    """D's loss nan at every step, G's finite in between: still diverged after `patience` steps."""
    guard = training.NonFiniteGuard(ONE, patience=3)
    with pytest.raises(training.TrainingDiverged):
        for step in range(10):
            assert not guard.finite(step, loss_d=torch.tensor(float("nan")))
            assert guard.finite(step, loss_g=torch.tensor(1.0))
    assert step == 2


def test_saver_never_writes_non_finite_weights_over_a_good_checkpoint(tmp_path):
    cfg = ToyConfig(out=str(tmp_path / "run"))
    modules, optimizers, batches = toy_parts(cfg)
    saver = training.Saver(cfg, ONE, "Toy", ToyNet(), modules, optimizers, batches,
                           extra=lambda: {"counter": 41})
    good = saver.save(1)
    assert good is not None and checkpoint.load(good, "Toy")["counter"] == 41
    with torch.no_grad():
        modules["net"].weight[0, 0] = float("nan")
    with pytest.raises(training.TrainingDiverged, match="no checkpoint written"):
        saver.save(2)
    state = checkpoint.load(tmp_path / "run", "Toy")
    assert state["step"] == 1 and torch.isfinite(state["net"]["weight"]).all()
    assert training.non_finite_entries({"net": modules["net"].state_dict()}) == ["net.weight"]


def test_checkpoint_holds_the_full_state_and_replica_digests(tmp_path):
    cfg = save_toy_run(tmp_path)
    state = checkpoint.load(tmp_path / "run", "Toy")
    assert {"net", "opt", "data", "rng", "config", "model_config", "versions", "replicas"} <= set(state)
    net = torch.nn.Linear(cfg.width, 1)
    net.load_state_dict(state["net"])
    assert state["replicas"] == [{"net": training.parameters_digest(net)}]
    with torch.no_grad():
        net.bias += 1e-6
    assert training.parameters_digest(net) != state["replicas"][0]["net"]


def test_stopper_time_budget_and_exit_code_after_a_signal(tmp_path):
    stop = training.Stopper(minutes=1e-9, env=ONE)
    assert stop.poll() and stop.reason == "time budget" and stop.signum == 0
    cfg = ToyConfig(out=str(tmp_path / "run"))
    modules, optimizers, batches = toy_parts(cfg)
    log = RunLog(cfg.out, 10)
    saver = training.Saver(cfg, ONE, "Toy", ToyNet(), modules, optimizers, batches, log)
    with training.Stopper(minutes=0, env=ONE) as stop:
        assert not stop.poll()
        os.kill(os.getpid(), signal.SIGTERM)  # handled: sets the flag, the process goes on
        assert stop.poll() and stop.reason == "signal SIGTERM"
    with pytest.raises(SystemExit) as e:
        training.finish(3, cfg, ONE, saver, stop, log)
    assert e.value.code == 128 + signal.SIGTERM
    assert checkpoint.load(cfg.out, "Toy")["step"] == 3  # the checkpoint came first


def test_finish_prints_where_everything_is(tmp_path, capsys):
    cfg = ToyConfig(out=str(tmp_path / "run"))
    modules, optimizers, batches = toy_parts(cfg)
    log = RunLog(cfg.out, 10)
    log.images(5, torch.zeros(4, 1, 4, 4))
    saver = training.Saver(cfg, ONE, "Toy", ToyNet(), modules, optimizers, batches, log)
    assert training.finish(5, cfg, ONE, saver, training.Stopper(0, ONE), log) == tmp_path / "run"
    out = capsys.readouterr()
    text = out.out + out.err
    for needle in ("done: 5 steps", "samples/step_0000005.png", "progress.gif", "checkpoints/latest.pt",
                   f"python sample.py --checkpoint {cfg.out}", f"python evaluate.py --checkpoint {cfg.out}"):
        assert needle in text, needle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=2)
    env = distributed.Dist(rank=rank, world_size=2, device=torch.device("cpu"))
    with training.Stopper(minutes=0, env=env) as stop:
        first = stop.poll()
        if rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # only rank 1 is signalled
        second = stop.poll()
        guard = training.NonFiniteGuard(env)
        finite = guard.finite(0, loss=torch.tensor(float("nan") if rank == 0 else 1.0))
    results[rank] = (first, second, stop.signum, finite)
    torch_dist.barrier()
    torch_dist.destroy_process_group()


def test_ranks_agree_on_a_signal_that_reached_one_of_them_and_on_a_nan_on_one_of_them():
    results = mp.Manager().dict()
    mp.spawn(_two_ranks, args=(_free_port(), results), nprocs=2, join=True)
    # neither stops before the signal; both stop after it, with its number; both skip rank 0's nan step
    assert results[0] == results[1] == (False, True, int(signal.SIGTERM), False)


def test_run_main_exit_codes(capsys):
    def diverges(cfg):
        raise training.TrainingDiverged("training diverged: 5 non-finite losses in a row")

    def bad_checkpoint(cfg):
        raise checkpoint.CheckpointError("x.pt: corrupt\nsecond line")

    for fn, code in [(diverges, training.EXIT_DIVERGED), (bad_checkpoint, 2)]:
        with pytest.raises(SystemExit) as e:
            training.run_main(fn, None)
        assert e.value.code == code
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_metrics_jsonl_stays_strict_json_with_nan(tmp_path):
    log = RunLog(tmp_path, 3)
    log.step(1, {"loss": float("nan"), "ok": 1.5, "big": float("inf")}, 4, True)
    log.close()

    def refuse(constant):
        raise ValueError(constant)

    record = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=refuse)
    assert record["loss"] is None and record["big"] is None and record["ok"] == 1.5


def test_config_json_names_the_data_the_cpu_and_the_start(tmp_path):
    cfg = ToyConfig(out=str(tmp_path))
    log = training.start_run(cfg, ONE, 0, ToyNet(), "fp32", toy_data())
    log.close()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["data_size"] == 16 and config["precision_resolved"] == "fp32"
    assert config["cpu"].startswith(distributed.cpu_model()) and "avx512_bf16" in config["cpu"]
    assert config["started"].endswith(" UTC") and config["started"][:4].isdigit()
