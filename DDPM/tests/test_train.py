"""The training script end to end: run folder, sample.py, exact resume (EMA included), signals, torchrun,
non-finite losses, resume with changed flags, tiny datasets, CLI errors, the pretrained EMA U-Net."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sample as sample_script
import train
from model import Config, UNet
from shared import checkpoint, cli, training
from shared.testing import children, environ, exits_with, one_error_line, strict_json_lines

HERE = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "8", "--batch-size", "8", "--width", "8", "--mults", "1,2", "--attn", "4",
        "--timesteps", "20", "--sample-steps", "2", "--threads", "1", "--precision", "fp32", "--log-every", "1",
        "--sample-every", "2"]


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(image_size=8, batch_size=8, width=8, mults="1,2", attn="4", timesteps=20, sample_steps=2,
                threads=1, precision="fp32", log_every=1, sample_every=2, steps=steps, out=str(out), ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


# ---------------------------------------------------------------- a run, on real data

def test_two_steps_on_embedded_mnist_write_a_complete_run_folder_that_sample_py_loads(tmp_path, capsys):
    run = train.main(tiny_config(tmp_path / "run", steps=2))  # the default dataset: the embedded MNIST copy
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 2 and config["dataset"] == "mnist"
    assert "embedded" in config["data_source"] and config["data_size"] == 5000
    lines = strict_json_lines(run / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2]
    assert all(0 < r["loss"] < 10 and 0 <= r["ema_decay"] < 1 for r in lines)
    assert (run / "samples" / "step_0000002.png").is_file() and (run / "progress.gif").is_file()
    assert (run / "denoising" / "step_0000002.png").is_file()
    state = checkpoint.load(run, model="DDPM")
    assert state["step"] == 2 and state["model_config"]["image_size"] == 8 and state["model_config"]["channels"] == 1
    assert not torch.equal(state["ema"]["conv_in.weight"], state["unet"]["conv_in.weight"])  # a real average
    summary = capsys.readouterr().out
    assert "done: 2 steps" in summary and f"python sample.py --checkpoint {run}" in summary

    out = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=5, steps=3, out=str(out), trajectory=2))
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(5)]
    assert (out / "grid.png").is_file() and (out / "trajectory.png").is_file()
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=2, steps=0, out=str(tmp_path / "anc"),
                                                  trajectory=0))  # the ancestral sampler
    assert len(list((tmp_path / "anc").glob("0*.png"))) == 2


@pytest.mark.parametrize("variant", [{}, {"schedule": "cosine", "prediction": "v"}], ids=["eps", "cosine-v"])
def test_resume_is_exact_and_logging_never_changes_training(tmp_path, variant):
    """6 straight steps logged and sampled every step == 3 steps, stop, resume, 3 more, logged every 3rd step:
    if logging or sampling consumed RNG, the weights (and the EMA) would differ."""
    straight = train.main(tiny_config(tmp_path / "a", steps=6, log_every=1, sample_every=1, **variant))
    sparse = dict(log_every=3, sample_every=3, **variant)
    train.main(tiny_config(tmp_path / "b", steps=3, **sparse))
    resumed = train.main(tiny_config(tmp_path / "b", steps=6, resume="auto", **sparse))
    a, b = checkpoint.load(straight, "DDPM"), checkpoint.load(resumed, "DDPM")
    assert a["step"] == b["step"] == 6
    for net in ("unet", "ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    assert torch.equal(a["opt"]["state"][0]["exp_avg"], b["opt"]["state"][0]["exp_avg"])
    assert a["data"] == b["data"]
    assert [r["step"] for r in strict_json_lines(resumed / "metrics.jsonl")] == [3, 6]


# ---------------------------------------------------------------- signals, torchrun

def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *TINY, "--steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size < 200:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    state = checkpoint.load(out, "DDPM")
    assert 0 < state["step"] < 100000 and not training.non_finite_entries(state["ema"])
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout + stderr
    assert "--resume auto" in stdout + stderr


def test_torchrun_two_processes_stop_together_when_one_rank_is_signalled(tmp_path):
    """2 CPU processes; SIGTERM to rank 1 only: both ranks stop at the same step, one good checkpoint holds
    identical replicas of the U-Net and of its EMA (the digests of the saved weights), and the job ends."""
    out = tmp_path / "ddp"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py", *TINY, "--steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 240
        while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size < 400:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
            time.sleep(0.2)
        rank1 = [pid for pid in children(proc.pid) if environ(pid).get("RANK") == "1"]
        assert len(rank1) == 1, children(proc.pid)
        os.kill(rank1[0], signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=90)  # a rank stopping alone would hang the other here
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "terminate called" not in stderr
    state = checkpoint.load(out, "DDPM")
    assert 2 < state["step"] < 100000 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout + stderr
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank drew its own t, noise
    assert [r["step"] for r in strict_json_lines(out / "metrics.jsonl")] == list(range(1, state["step"] + 1))
    assert len(state["replicas"]) == 2 and state["replicas"][0] == state["replicas"][1]
    for net in ("unet", "ema"):
        fresh = UNet(Config(**state["model_config"]))
        fresh.load_state_dict(state[net])
        assert state["replicas"][0][net] == training.parameters_digest(fresh), net


# ---------------------------------------------------------------- non-finite losses

def nan_on_calls(monkeypatch, calls: set[int] | None) -> None:
    """train.l_simple returns nan on the given calls (1-based; None = every call)."""
    real_loss, count = train.l_simple, [0]

    def loss(*args):
        count[0] += 1
        value = real_loss(*args)
        return value * float("nan") if calls is None or count[0] in calls else value
    monkeypatch.setattr(train, "l_simple", loss)


def test_a_nan_loss_skips_that_update_and_keeps_metrics_strict_json(tmp_path, monkeypatch, capsys):
    two = checkpoint.load(train.main(tiny_config(tmp_path / "two", steps=2)), "DDPM")
    nan_on_calls(monkeypatch, {3})
    run = train.main(tiny_config(tmp_path / "nan", steps=3))
    three = checkpoint.load(run, "DDPM")
    for net in ("unet", "ema"):  # step 3's update (and its EMA step) was skipped
        for k, v in three[net].items():
            assert torch.equal(v, two[net][k]), (net, k)
    lines = strict_json_lines(run / "metrics.jsonl")
    assert lines[2]["step"] == 3 and lines[2]["loss"] is None and lines[1]["loss"] > 0
    assert "step 3: non-finite loss; update skipped" in capsys.readouterr().out


def test_nan_losses_every_step_stop_the_run_with_exit_3_and_no_bad_checkpoint(tmp_path, monkeypatch, capsys):
    nan_on_calls(monkeypatch, None)
    cfg = tiny_config(tmp_path / "run", steps=50, ckpt_every=1)
    exits_with(training.EXIT_DIVERGED, training.run_main, train.main, cfg)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(errors) == 1 and "training diverged: 5 non-finite losses in a row" in errors[0]
    saved = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert saved and all(not training.non_finite_entries(checkpoint.load(p, "DDPM")) for p in saved)
    assert checkpoint.load(tmp_path / "run", "DDPM")["step"] == 4


# ---------------------------------------------------------------- resume with other flags

def test_resume_with_a_new_lr_uses_it_and_records_it(tmp_path, capsys):
    train.main(tiny_config(tmp_path / "run", steps=2))
    run = train.main(tiny_config(tmp_path / "run", steps=3, lr=1e-4, resume="auto"))
    state = checkpoint.load(run, "DDPM")
    assert state["step"] == 3 and all(g["lr"] == 1e-4 for g in state["opt"]["param_groups"])
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-4
    assert "--lr 0.001 -> 0.0001" in capsys.readouterr().out


@pytest.mark.parametrize("change", [{"batch_size": 4}, {"width": 16}, {"schedule": "linear"}])
def test_resume_with_a_setting_that_cannot_change_exits_2_with_one_line(tmp_path, capsys, change):
    train.main(tiny_config(tmp_path / "run", steps=1))
    capsys.readouterr()
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "run", steps=2, resume="auto", **change))
    flag = "--" + next(iter(change)).replace("_", "-")
    assert "cannot resume" in (line := one_error_line(capsys)) and flag in line


# ---------------------------------------------------------------- small data, bad flags

def test_a_folder_of_five_images_trains_to_the_end_and_samples(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8).numpy()).save(images / f"{i}.png")
    run = train.main(tiny_config(tmp_path / "run", steps=3, batch_size=4, dataset=f"folder:{images}"))
    state = checkpoint.load(run, "DDPM")
    assert state["step"] == 3 and state["model_config"]["channels"] == 3
    assert json.loads((run / "config.json").read_text())["data_size"] == 5
    out = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=4, steps=2, out=str(out), trajectory=0))
    assert len(list(out.glob("0*.png"))) == 4


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "18"], "divisible"),
    (["--mults", "1,x"], "--mults"),
    (["--schedule", "quadratic"], "--schedule"),
    (["--prediction", "x0"], "--prediction"),
    (["--ema", "1"], "--ema"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--width", "0"], "--width"),
    (["--steps", "ten"], "--steps"),
    (["--sched", "cosine"], "--sched"),  # no abbreviated flags
])
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path, capsys):
    exits_with(2, cli.parse, train.TrainConfig, [*args, "--out", str(tmp_path / "x")], train.check)
    assert needle in one_error_line(capsys)


# ---------------------------------------------------------------- sample.py: bad checkpoints, pretrained weights

def test_sample_py_rejects_bad_checkpoints_with_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(junk), *out])
    assert "corrupt or truncated" in one_error_line(capsys)
    other = tmp_path / "other.pt"
    checkpoint.save(other, {"model": "VAE", "step": 1})
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(other), *out])
    assert "VAE checkpoint, not DDPM" in one_error_line(capsys)
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(junk), "--eta", "2", *out])
    assert "--eta" in one_error_line(capsys)


def test_sample_pretrained_loads_an_exported_run(tmp_path, monkeypatch, capsys):
    from shared import pretrained

    run = train.main(tiny_config(tmp_path / "run", steps=1))
    exported = pretrained.export(str(run), "DDPM", ["ema:unet"], str(tmp_path / "pretrained" / "ema_unet.pt"))
    monkeypatch.setattr(sample_script, "PRETRAINED", exported)
    out = tmp_path / "samples"
    sample_script.cli_main(["--pretrained", "--num", "3", "--steps", "2", "--trajectory", "0", "--out", str(out)])
    assert len(list(out.glob("0*.png"))) == 3 and "step 1, --dataset mnist" in capsys.readouterr().out
    net, _ = sample_script.load_pretrained(torch.device("cpu"))
    saved = checkpoint.load(run, "DDPM")["ema"]
    for k, v in net.state_dict().items():  # the fp16 copy of the run's EMA U-Net
        assert torch.allclose(v.float(), saved[k].float(), rtol=1e-3, atol=1e-4), k


def test_sample_pretrained_without_the_file_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "pretrained" / "ema_unet.pt"
    monkeypatch.setattr(sample_script, "PRETRAINED", missing)
    exits_with(2, sample_script.cli_main, ["--pretrained", "--out", str(tmp_path / "o")])
    line = one_error_line(capsys)
    assert str(missing) in line and "train" in line and "fetch" in line


def test_shipped_pretrained_ema_unet_loads_safely_and_samples():
    """Fails until pretrained/ema_unet.pt (the EMA U-Net of the default 10-minute MNIST run) is shipped."""
    path = HERE / "pretrained" / "ema_unet.pt"
    assert path.is_file(), f"{path} not shipped yet"
    assert path.stat().st_size < 3_000_000
    state = torch.load(path, weights_only=True)
    assert state["model"] == "DDPM" and all(v.dtype == torch.float16 for v in state["unet"].values()
                                            if v.is_floating_point())
    net, _ = sample_script.load_pretrained(torch.device("cpu"))
    x, _ = sample_script.sample(net, 2, 5, generator=torch.Generator().manual_seed(0))
    cfg = net.cfg
    assert x.shape == (2, cfg.channels, cfg.image_size, cfg.image_size) and torch.isfinite(x).all()
    assert x.std() > 0.1  # a trained network, not a constant image
