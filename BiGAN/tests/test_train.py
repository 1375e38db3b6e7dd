"""The training script end to end: run folder contents, sample.py, exact resume, signals, torchrun, CLI errors."""
# Adapted from DCGAN/tests/test_train.py: the contract tests (run folder, resume, SIGTERM, torchrun, CLI errors).
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
from shared import checkpoint, cli

HERE = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "16", "--batch-size", "8", "--z-dim", "8", "--g-width", "8", "--e-width", "8",
        "--d-width", "8", "--d-joint", "16", "--threads", "1", "--precision", "fp32", "--log-every", "1",
        "--sample-every", "2"]


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(image_size=16, batch_size=8, z_dim=8, g_width=8, e_width=8, d_width=8, d_joint=16, threads=1,
                precision="fp32", log_every=1, sample_every=2, steps=steps, out=str(out), ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def run_script(*args, timeout=240, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=timeout,
                          env=env, **kwargs)


def test_two_steps_write_a_complete_run_folder_that_sample_py_loads(tmp_path):
    run = train.main(tiny_config(tmp_path / "run", steps=2))
    assert json.loads((run / "config.json").read_text())["steps"] == 2
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_eg"]])).all() for r in lines)
    assert (run / "samples" / "step_0000002.png").is_file()
    assert (run / "reconstructions" / "step_0000002.png").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    state = checkpoint.load(run, model="BiGAN")
    assert state["step"] == 2 and state["model_config"]["image_size"] == 16
    assert {"G", "E", "D", "opt_eg", "opt_d"} <= state.keys()

    out = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=5, out=str(out), interpolations=2,
                                                  reconstructions=16))
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(5)]
    for name in ("grid.png", "interpolation.png", "reconstructions.png"):
        assert (out / name).is_file(), name


def test_reconstruction_grid_alternates_real_rows_and_their_reconstructions():
    torch.manual_seed(0)
    from model import Config, Encoder, Generator, reconstruct

    cfg = Config(image_size=16, channels=1, z_dim=8, g_width=8, e_width=8)
    G, E = Generator(cfg).eval(), Encoder(cfg).eval()
    x = torch.rand(16, 1, 16, 16) * 2 - 1
    rows = sample_script.reconstruction_grid(G, E, x, per_row=8)  # (32, 1, 16, 16): x[:8], rec[:8], x[8:], rec[8:]
    assert rows.shape == (32, 1, 16, 16)
    rec = reconstruct(G, E, x)
    assert torch.equal(rows[:8], x[:8]) and torch.equal(rows[16:24], x[8:])
    assert torch.allclose(rows[8:16], rec[:8]) and torch.allclose(rows[24:], rec[8:])


def test_resume_is_exact(tmp_path):
    """train 4 steps == train 2, stop, resume from the checkpoint, train 2 more (dropout masks included)."""
    straight = train.main(tiny_config(tmp_path / "a", steps=4))
    train.main(tiny_config(tmp_path / "b", steps=2))
    resumed = train.main(tiny_config(tmp_path / "b", steps=4, resume="auto"))
    a, b = checkpoint.load(straight, "BiGAN"), checkpoint.load(resumed, "BiGAN")
    assert a["step"] == b["step"] == 4
    for net in ("G", "E", "D"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    assert torch.equal(a["opt_eg"]["state"][0]["exp_avg"], b["opt_eg"]["state"][0]["exp_avg"])
    assert torch.equal(a["opt_d"]["state"][0]["exp_avg"], b["opt_d"]["state"][0]["exp_avg"])
    assert a["data"] == b["data"]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *TINY, "--steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size < 200:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    state = checkpoint.load(out, "BiGAN")
    assert 0 < state["step"] < 100000
    assert "--resume auto" in stdout + stderr


def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    res = run_script("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29543", "train.py",
                     *TINY, "--steps", "3", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "terminate called" not in res.stderr
    state = checkpoint.load(out, "BiGAN")
    assert state["step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2
    # each rank drew its own noise: the saved RNG streams differ
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    # rank 0 alone logs: one line per step, not two
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert all(torch.isfinite(v).all() for net in ("G", "E", "D") for v in state[net].values() if v.is_floating_point())


def test_lr_d_is_ds_rate_and_zero_means_lr(tmp_path):
    """--lr-d sets D's Adam rate only (E and G share --lr); --lr-d 0 gives D --lr too."""
    state = checkpoint.load(train.main(tiny_config(tmp_path / "a", steps=1, lr=1e-4, lr_d=3e-4)), "BiGAN")
    assert state["opt_d"]["param_groups"][0]["lr"] == 3e-4 and state["opt_eg"]["param_groups"][0]["lr"] == 1e-4
    state = checkpoint.load(train.main(tiny_config(tmp_path / "b", steps=1, lr=1e-4, lr_d=0)), "BiGAN")
    assert state["opt_d"]["param_groups"][0]["lr"] == 1e-4


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "24"], "power of two"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--steps", "ten"], "--steps"),
    (["--encoder", "vae"], "--encoder"),
    (["--d-norm", "layer"], "--d-norm"),
    (["--d-joint", "0"], "--d-joint"),
    (["--lr-d", "-1"], "--lr-d"),
])
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path, capsys):
    """Parse-time errors, in-process (train.py's __main__ runs exactly this parse)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.parse(train.TrainConfig, [*args, "--out", str(tmp_path / "x")], check=train.check)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


def test_missing_data_exits_2_with_one_line_naming_the_path(tmp_path):
    """A run-time error, through the real script: one line naming the path, no traceback."""
    res = run_script("train.py", "--dataset", "mnist", "--data-root", "/nonexistent/data",
                     "--out", str(tmp_path / "x"), timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "/nonexistent/data" in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_sample_py_rejects_bad_checkpoints(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    res = run_script("sample.py", "--checkpoint", str(junk), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "corrupt" in res.stderr and "Traceback" not in res.stderr
    other = tmp_path / "other.pt"
    checkpoint.save(other, {"model": "DCGAN", "step": 1})
    res = run_script("sample.py", "--checkpoint", str(other), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "DCGAN checkpoint, not BiGAN" in res.stderr
