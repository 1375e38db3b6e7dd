"""The training script end to end: the critic/generator interleaving, both variants, the run folder, exact resume
(logging never changes training), per-variant defaults, non-finite losses, signals, torchrun, CLI errors."""
# Adapted from DCGAN/tests/test_train.py: the contract tests (run folder, resume, SIGTERM, torchrun, CLI errors).
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import train
from model import Config, Critic, Generator
from shared import checkpoint, cli, training
from shared.testing import strict_json_lines

HERE = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "16", "--batch-size", "8", "--z-dim", "8", "--g-width", "8", "--d-width", "8",
        "--threads", "1", "--precision", "fp32", "--log-every", "1", "--sample-every", "2"]


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(image_size=16, batch_size=8, z_dim=8, g_width=8, d_width=8, threads=1, precision="fp32",
                log_every=1, sample_every=2, steps=steps, out=str(out), ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def assert_same_state(a: dict, b: dict) -> None:
    """Identical weights, BatchNorm statistics, optimizer moments and data position."""
    for net in ("G", "D"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"
    for opt in ("opt_g", "opt_d"):
        for i, state in a[opt]["state"].items():
            for k, v in state.items():
                assert torch.equal(v, b[opt]["state"][i][k]), f"{opt}.{i}.{k} differs"
    assert a["data"] == b["data"] and a["critic_updates"] == b["critic_updates"]


def test_gp_run_folder_logs_the_estimate(tmp_path):
    run = train.main(tiny_config(tmp_path / "run", steps=2, n_critic=3))
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"]["critic_norm"] == "none" and config["data_size"] == 5000  # the embedded MNIST
    lines = strict_json_lines(run / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2]
    for r in lines:
        assert 0 < r["gradient_penalty"] < 2 and 0 < r["grad_norm_std"] < r["grad_norm_mean"] < 1
        assert r["loss_d"] == pytest.approx(-r["wasserstein"] + 10 * r["gradient_penalty"], rel=1e-5)
        assert abs(r["wasserstein"]) < 1 and abs(r["loss_g"]) < 1  # an untrained critic scores near 0
    assert (run / "samples" / "step_0000002.png").is_file() and (run / "progress.gif").is_file()
    assert list(run.glob("events.out.tfevents.*"))

    # one step = n_critic critic updates, then one generator update
    state = checkpoint.load(run, model="WGAN")
    assert state["step"] == 2 and state["critic_updates"] == 6
    assert state["opt_d"]["state"][0]["step"].item() == 6 and state["opt_g"]["state"][0]["step"].item() == 2
    assert state["opt_d"]["param_groups"][0]["betas"] == (0.0, 0.9)  # Gulrajani et al.'s Adam
    assert state["data"]["position"] == 6  # each critic update drew a fresh real batch


def test_clip_variant_keeps_every_critic_weight_in_range(tmp_path):
    run = train.main(tiny_config(tmp_path / "clip", steps=3, variant="clip", lr=5e-3, clip=0.01))
    state = checkpoint.load(run, model="WGAN")
    assert state["model_config"]["critic_norm"] == "batch"  # the WGAN paper's DCGAN critic
    assert "square_avg" in state["opt_d"]["state"][0]  # RMSprop
    weights = [v for k, v in state["D"].items() if not k.endswith(("running_mean", "running_var", "batches_tracked"))]
    assert max(w.abs().max().item() for w in weights) == pytest.approx(0.01)  # at the boundary, never beyond
    lines = strict_json_lines(run / "metrics.jsonl")
    assert all(0.01 - 1e-6 < r["critic_weight_max"] <= 0.01 + 1e-9 and "gradient_penalty" not in r for r in lines)
    assert all(0 < r["grad_norm_mean"] < 1 for r in lines)  # clipped weights: a far from 1-Lipschitz critic


def test_logging_never_changes_the_clip_variants_training(tmp_path):
    """Issue 18, fault 4: clip's logged gradient norms once drew torch.rand and ran the BatchNorm critic in
    train mode, so --log-every changed the weights. Two runs that differ only in --log-every end identical."""
    every = train.main(tiny_config(tmp_path / "every", steps=4, variant="clip", n_critic=2, log_every=1))
    rarely = train.main(tiny_config(tmp_path / "rarely", steps=4, variant="clip", n_critic=2, log_every=3))
    a, b = checkpoint.load(every, "WGAN"), checkpoint.load(rarely, "WGAN")
    assert_same_state(a, b)
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])  # logging drew nothing from the global RNG
    by_step = {r["step"]: r for r in strict_json_lines(every / "metrics.jsonl")}
    for r in strict_json_lines(rarely / "metrics.jsonl"):  # steps 3 and 4: the same figures, gradient norms included
        assert {k: v for k, v in r.items() if k != "images_per_s"} == \
               {k: v for k, v in by_step[r["step"]].items() if k != "images_per_s"}


@pytest.mark.parametrize("variant", ["gp", "clip"])
def test_resume_is_exact_with_log_every_3(tmp_path, variant):
    """train 4 steps == train 2, stop, resume, train 2 more. With --log-every 3 the split run logs at step 2
    and the straight one does not, so any effect of logging on training would show here."""
    straight = train.main(tiny_config(tmp_path / "a", steps=4, variant=variant, n_critic=2, log_every=3))
    train.main(tiny_config(tmp_path / "b", steps=2, variant=variant, n_critic=2, log_every=3))
    resumed = train.main(tiny_config(tmp_path / "b", steps=4, variant=variant, n_critic=2, log_every=3,
                                     resume="auto"))
    a, b = checkpoint.load(straight, "WGAN"), checkpoint.load(resumed, "WGAN")
    assert a["step"] == b["step"] == 4 and a["critic_updates"] == b["critic_updates"] == 8
    assert_same_state(a, b)
    strip = lambda r: {k: v for k, v in r.items() if k != "images_per_s"}
    log_a = [strip(r) for r in strict_json_lines(straight / "metrics.jsonl")]
    log_b = [strip(r) for r in strict_json_lines(resumed / "metrics.jsonl")]
    assert [r["step"] for r in log_a] == [3, 4] and [r["step"] for r in log_b] == [2, 3, 4]
    assert log_a == log_b[1:]  # the same Wasserstein estimates at steps 3 and 4


def parse(*argv: str, out: str = "runs/never_written") -> train.TrainConfig:
    """train.py's command line, in-process (its __main__ is run_main(main, this parse))."""
    return cli.parse(train.TrainConfig, [*argv, "--out", out], check=train.check,
                     defaults=train.apply_variant_defaults)


def test_variant_defaults_apply_only_to_flags_not_given(capsys):
    """Issue 18, fault 9: the defaults were applied after parsing by matching argv strings."""
    lr_nc = lambda c: (c.lr, c.lr_d, c.n_critic)
    assert lr_nc(parse()) == (3e-4, 6e-4, 1)  # gp: the critic at twice G's rate, one critic update per G step
    assert lr_nc(parse("--variant", "clip")) == (5e-5, 0.0, 5)  # the original WGAN: RMSprop 5e-5 for both
    assert lr_nc(parse("--n-critic", "2", "--variant", "clip")) == (5e-5, 0.0, 2)
    assert lr_nc(parse("--variant=clip", "--n-critic=2")) == (5e-5, 0.0, 2)
    assert lr_nc(parse("--lr", "1e-4")) == (1e-4, 0.0, 1)  # --lr alone: both networks at 1e-4 (lr_d 0 = --lr)
    assert lr_nc(parse("--lr", "1e-4", "--variant", "clip")) == (1e-4, 0.0, 5)
    assert lr_nc(parse("--lr-d", "0")) == (3e-4, 0.0, 1)  # the papers' one rate, G's default
    assert lr_nc(parse("--lr=1e-4", "--lr-d=5e-4", "--n-critic=5")) == (1e-4, 5e-4, 5)
    with pytest.raises(SystemExit) as exit_info:  # no abbreviations: --n-crit is not --n-critic
        parse("--n-crit", "2")
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--n-crit" in lines[0], lines


@pytest.mark.parametrize("variant", ["gp", "clip"])
def test_lr_d_sets_the_critics_rate_only(tmp_path, variant):
    """--lr-d is the critic's learning rate (G keeps --lr); --lr-d 0 gives the critic --lr (both papers)."""
    state = checkpoint.load(train.main(tiny_config(tmp_path / "a", steps=1, variant=variant, lr=1e-4, lr_d=3e-4)),
                            "WGAN")
    assert state["opt_d"]["param_groups"][0]["lr"] == 3e-4 and state["opt_g"]["param_groups"][0]["lr"] == 1e-4
    state = checkpoint.load(train.main(tiny_config(tmp_path / "b", steps=1, variant=variant, lr=1e-4, lr_d=0.0)),
                            "WGAN")
    assert state["opt_d"]["param_groups"][0]["lr"] == 1e-4


def test_resume_takes_new_learning_rates_and_refuses_other_changes(tmp_path, capsys):
    run = tmp_path / "run"
    train.main(tiny_config(run, steps=2))
    state = checkpoint.load(train.main(tiny_config(run, steps=3, lr=1e-3, lr_d=2e-3, resume="auto")), "WGAN")
    assert state["opt_g"]["param_groups"][0]["lr"] == 1e-3 and state["opt_d"]["param_groups"][0]["lr"] == 2e-3
    assert state["critic_updates"] == 3  # read back from the checkpoint, then counted on
    config = json.loads((run / "config.json").read_text())
    assert (config["lr"], config["lr_d"]) == (1e-3, 2e-3)
    assert "--lr 0.0003 -> 0.001" in capsys.readouterr().out
    for change, needle in [({"batch_size": 4}, "--batch-size 8 -> 4"), ({"variant": "clip"}, "--variant 'gp' -> "),
                           ({"d_width": 16}, "--d-width 8 -> 16")]:
        with pytest.raises(SystemExit) as exit_info:  # train.py's __main__: one line, exit 2
            training.run_main(train.main, tiny_config(run, steps=4, resume="auto", **change))
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], lines
    assert checkpoint.load(run, "WGAN")["step"] == 3  # the refused resumes wrote nothing


def nan_on_calls(function, calls):
    """`function` whose result is nan (keeping its graph) on the given 1-based call numbers (all if None)."""
    count = {"n": 0}

    def patched(*args):
        count["n"] += 1
        loss = function(*args)
        return loss * float("nan") if calls is None or count["n"] in calls else loss
    return patched


def test_a_nan_loss_skips_that_update_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "critic_loss", nan_on_calls(train.critic_loss, {2}))  # the critic update of step 2
    run = train.main(tiny_config(tmp_path / "run", steps=3, ckpt_every=1))
    step1, step2, step3 = (checkpoint.load(run / "checkpoints" / f"step_000000{i}.pt", "WGAN") for i in (1, 2, 3))
    for k in step1["D"]:
        assert torch.equal(step1["D"][k], step2["D"][k]), f"the skipped update changed D.{k}"
    assert not all(torch.equal(step2["D"][k], step3["D"][k]) for k in step2["D"])  # the next one applies again
    assert not all(torch.equal(step1["G"][k], step2["G"][k]) for k in step1["G"])  # G's update went ahead
    assert (step2["critic_updates"], step3["critic_updates"]) == (1, 2)
    lines = strict_json_lines(run / "metrics.jsonl")
    assert lines[1]["step"] == 2 and lines[1]["loss_d"] is None and lines[2]["loss_d"] is not None
    out = capsys.readouterr().out
    assert "step 2: non-finite loss_d" in out and "update skipped" in out


def assert_every_checkpoint_finite(run: Path) -> int:
    files = sorted((run / "checkpoints").glob("*.pt"))
    for f in files:
        state = torch.load(f, weights_only=True)
        assert training.non_finite_entries({k: state[k] for k in ("G", "D", "opt_g", "opt_d")}) == [], f
    return len(files)


def test_nan_every_step_stops_with_exit_3_and_no_bad_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "critic_loss", nan_on_calls(train.critic_loss, None))
    monkeypatch.setattr(train, "generator_loss", nan_on_calls(train.generator_loss, None))
    with pytest.raises(SystemExit) as exit_info:
        training.run_main(train.main, tiny_config(tmp_path / "run", steps=20, ckpt_every=1))
    assert exit_info.value.code == training.EXIT_DIVERGED == 3
    assert "training diverged: 5 non-finite losses in a row" in capsys.readouterr().err
    assert assert_every_checkpoint_finite(tmp_path / "run") >= 1
    assert all(r["loss_d"] is None for r in strict_json_lines(tmp_path / "run" / "metrics.jsonl"))


def test_a_huge_learning_rate_never_writes_non_finite_weights(tmp_path, capsys):
    """Issue 18, fault 2: WGAN at --lr 1e8 logged bare NaN, exited 0 and wrote non-finite weights to latest.pt.
    Now it either ends with finite weights in latest.pt or exits 3, and no checkpoint file ever holds nan / inf
    (a checkpoint is attempted at every step)."""
    run = tmp_path / "run"
    try:
        training.run_main(train.main, tiny_config(run, steps=12, lr=1e8, lr_d=0.0, ckpt_every=1))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code in (0, 3), err
    written = assert_every_checkpoint_finite(run)
    if code == 0:
        assert written >= 1 and checkpoint.load(run, "WGAN")["step"] > 0
    else:
        assert "training diverged" in err and "non-finite" in out
    strict_json_lines(run / "metrics.jsonl")  # raises on a bare NaN


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *TINY, "--steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM == 143, stderr[-2000:]
    state = checkpoint.load(out, "WGAN")
    assert 3 <= state["step"] < 100000 and state["critic_updates"] == train.DEFAULT_N_CRITIC["gp"] * state["step"]
    assert training.non_finite_entries({k: state[k] for k in ("G", "D")}) == []
    assert "--resume auto" in stdout + stderr


def torchrun(out: Path, *args: str) -> subprocess.Popen:
    with socket.socket() as s:  # a free port: other folders' torchrun tests may run at the same time
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={port}", "train.py", *TINY, "--out", str(out), *args],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def assert_replicas_identical(state: dict) -> None:
    """Both ranks' parameter digests agree, and equal the digests of the saved weights in fresh networks."""
    assert len(state["replicas"]) == 2 and state["replicas"][0] == state["replicas"][1]
    mcfg = Config(**state["model_config"])
    for name, net in (("G", Generator(mcfg)), ("D", Critic(mcfg))):
        net.load_state_dict(state[name])
        assert state["replicas"][0][name] == training.parameters_digest(net), name


def test_torchrun_two_processes_with_the_gradient_penalty(tmp_path):
    """DDP through the penalty's double backward: both ranks finish with identical weights and log once."""
    out = tmp_path / "ddp"
    proc = torchrun(out, "--steps", "3", "--n-critic", "2")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    assert "terminate called" not in stderr
    state = checkpoint.load(out, "WGAN")
    assert state["step"] == 3 and state["critic_updates"] == 6 and state["world_size"] == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank drew its own noise
    assert [r["step"] for r in strict_json_lines(out / "metrics.jsonl")] == [1, 2, 3]
    assert_replicas_identical(state)


def worker_pid(launcher: int, rank: int) -> int | None:
    """The torchrun worker (a child of the launcher) whose environment says RANK=rank."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_torchrun_a_signal_to_one_rank_stops_both_with_a_checkpoint(tmp_path):
    """Issue 18, fault 1: a SIGTERM that reached one rank hung the job. Now every rank stops at the same step."""
    out = tmp_path / "ddp"
    proc = torchrun(out, "--steps", "100000", "--variant", "clip", "--n-critic", "1")
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    pid = worker_pid(proc.pid, rank=1)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    try:
        proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the job did not end after rank 1 was signalled")
    state = checkpoint.load(out, "WGAN")
    assert 3 <= state["step"] < 100000 and state["critic_updates"] == state["step"]
    assert_replicas_identical(state)


def test_a_folder_of_five_images_trains_and_samples(tmp_path):
    import sample as sample_script

    folder = tmp_path / "five"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (20, 20), (50 * i, 100, 200 - 40 * i)).save(folder / f"{i}.png")
    run = train.main(tiny_config(tmp_path / "run", steps=3, dataset=f"folder:{folder}", batch_size=4))
    state = checkpoint.load(run, "WGAN")
    assert state["step"] == 3 and json.loads((run / "config.json").read_text())["data_size"] == 5
    out = sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=4, out=str(tmp_path / "s"),
                                                        interpolations=1))
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(4)]
    with Image.open(out / "000000.png") as img:
        assert img.size == (16, 16) and img.mode == "RGB"


def test_a_few_steps_on_the_embedded_mnist(tmp_path):
    run = train.main(tiny_config(tmp_path / "run", steps=3, dataset="mnist", log_every=3))
    config = json.loads((run / "config.json").read_text())
    assert config["data_size"] == 5000 and "embedded" in config["data_source"]
    assert checkpoint.load(run, "WGAN")["model_config"]["channels"] == 1
    (record,) = strict_json_lines(run / "metrics.jsonl")
    assert record["step"] == 3 and 0 < record["gradient_penalty"] < 2


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "24"], "power of two"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--variant", "wgan"], "--variant"),
    (["--critic-norm", "batch"], "--critic-norm layer or none"),
    (["--critic-norm", "spectral"], "--critic-norm"),
    (["--n-critic", "0"], "--n-critic"),
    (["--clip", "0"], "--clip"),
    (["--lr-d", "-1"], "--lr-d"),
    (["--lr", "nan"], "--lr"),
    (["--precision", "fp8"], "--precision"),
])
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path, capsys):
    """Parse-time errors, in-process (train.py's __main__ runs exactly this parse)."""
    with pytest.raises(SystemExit) as exit_info:
        parse(*args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


def test_missing_data_exits_2_with_one_line_naming_the_path(tmp_path, capsys):
    """A run-time error: one line naming the path, no traceback, and nothing written."""
    with pytest.raises(SystemExit) as exit_info:
        training.run_main(train.main, parse("--data-root", "/nonexistent/data", out=str(tmp_path / "x")))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "/nonexistent/data" in lines[0], lines
    assert not (tmp_path / "x").exists()
