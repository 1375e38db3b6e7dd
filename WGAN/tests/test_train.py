"""The training script end to end: the critic/generator interleaving, both variants, run folder contents,
sample.py, exact resume, signals, torchrun, CLI errors."""
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
TINY = ["--image-size", "16", "--batch-size", "8", "--z-dim", "8", "--g-width", "8", "--d-width", "8",
        "--threads", "1", "--precision", "fp32", "--log-every", "1", "--sample-every", "2"]


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(image_size=16, batch_size=8, z_dim=8, g_width=8, d_width=8, threads=1, precision="fp32",
                log_every=1, sample_every=2, steps=steps, out=str(out), ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def run_script(*args, timeout=240, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=timeout,
                          env=env, **kwargs)


def test_gp_run_folder_logs_the_estimate_and_sample_py_loads_it(tmp_path):
    run = train.main(tiny_config(tmp_path / "run", steps=2, n_critic=3))
    assert json.loads((run / "config.json").read_text())["model_config"]["critic_norm"] == "none"
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    for key in ("wasserstein", "loss_g", "gradient_penalty", "grad_norm_mean", "grad_norm_std"):
        assert all(torch.isfinite(torch.tensor(r[key])) for r in lines), key
    assert all(r["gradient_penalty"] > 0 and r["grad_norm_std"] > 0 for r in lines)
    assert (run / "samples" / "step_0000002.png").is_file()
    assert list(run.glob("events.out.tfevents.*"))

    # one step = n_critic critic updates, then one generator update
    state = checkpoint.load(run, model="WGAN")
    assert state["step"] == 2 and state["critic_updates"] == 6
    assert state["opt_d"]["state"][0]["step"].item() == 6 and state["opt_g"]["state"][0]["step"].item() == 2
    assert state["opt_d"]["param_groups"][0]["betas"] == (0.0, 0.9)  # Gulrajani et al.'s Adam
    assert state["data"]["position"] == 6  # each critic update drew a fresh real batch

    out = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=5, out=str(out), interpolations=2))
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(5)]
    assert (out / "grid.png").is_file() and (out / "interpolation.png").is_file()


def test_clip_variant_keeps_every_critic_weight_in_range(tmp_path):
    run = train.main(tiny_config(tmp_path / "clip", steps=3, variant="clip", lr=5e-3, clip=0.01))
    state = checkpoint.load(run, model="WGAN")
    assert state["model_config"]["critic_norm"] == "batch"  # the WGAN paper's DCGAN critic
    assert "square_avg" in state["opt_d"]["state"][0]  # RMSprop
    weights = [v for k, v in state["D"].items() if not k.endswith(("running_mean", "running_var", "batches_tracked"))]
    assert max(w.abs().max().item() for w in weights) == pytest.approx(0.01)  # at the boundary, never beyond
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["critic_weight_max"] <= 0.01 + 1e-9 and "gradient_penalty" not in r for r in lines)
    assert all(r["grad_norm_mean"] > 0 for r in lines)


def test_variant_chooses_its_learning_rates_and_n_critic_unless_given():
    cfg = train.TrainConfig(variant="clip")
    clip = train.apply_variant_defaults(cfg, ["--variant", "clip"])
    assert (clip.lr, clip.lr_d, clip.n_critic) == (5e-5, 0.0, 5)  # the original WGAN: RMSprop 5e-5 for both, n_critic 5
    assert train.apply_variant_defaults(cfg, ["--variant", "clip", "--lr-d", "1e-4"]).lr_d == cfg.lr_d
    assert train.apply_variant_defaults(cfg, ["--variant", "clip", "--lr", "3e-4"]).lr == cfg.lr
    assert train.apply_variant_defaults(cfg, ["--variant=clip", "--lr=3e-4"]).lr == cfg.lr
    assert train.apply_variant_defaults(cfg, ["--variant=clip", "--n-critic=2"]).n_critic == cfg.n_critic
    gp = train.apply_variant_defaults(train.TrainConfig(n_critic=7, lr_d=0.0), [])
    assert (gp.lr, gp.lr_d, gp.n_critic) == (3e-4, 6e-4, 1)  # the critic at twice G's rate, one update per G step
    assert train.apply_variant_defaults(train.TrainConfig(lr_d=0.0), ["--lr-d=0"]).lr_d == 0.0  # the papers' one rate
    assert train.apply_variant_defaults(train.TrainConfig(n_critic=7), ["--n-critic", "7"]).n_critic == 7


@pytest.mark.parametrize("variant", ["gp", "clip"])
def test_resume_is_exact(tmp_path, variant):
    """train 4 steps == train 2, stop, resume from the checkpoint, train 2 more (interleaving included)."""
    straight = train.main(tiny_config(tmp_path / "a", steps=4, variant=variant, n_critic=2))
    train.main(tiny_config(tmp_path / "b", steps=2, variant=variant, n_critic=2))
    resumed = train.main(tiny_config(tmp_path / "b", steps=4, variant=variant, n_critic=2, resume="auto"))
    a, b = checkpoint.load(straight, "WGAN"), checkpoint.load(resumed, "WGAN")
    assert a["step"] == b["step"] == 4 and a["critic_updates"] == b["critic_updates"] == 8
    for net in ("G", "D"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    for opt in ("opt_g", "opt_d"):
        for k, v in a[opt]["state"][0].items():
            assert torch.equal(v, b[opt]["state"][0][k]), f"{opt}.{k}"
    assert a["data"] == b["data"]
    log_a = (straight / "metrics.jsonl").read_text().splitlines()
    log_b = (resumed / "metrics.jsonl").read_text().splitlines()
    strip = lambda l: {k: v for k, v in json.loads(l).items() if k != "images_per_s"}
    assert [strip(l) for l in log_a] == [strip(l) for l in log_b]  # the same Wasserstein estimates, step by step


@pytest.mark.parametrize("variant", ["gp", "clip"])
def test_lr_d_sets_the_critics_rate_only(tmp_path, variant):
    """--lr-d is the critic's learning rate (G keeps --lr); --lr-d 0 gives the critic --lr (both papers)."""
    state = checkpoint.load(train.main(tiny_config(tmp_path / "a", steps=1, variant=variant, lr=1e-4, lr_d=3e-4)),
                            "WGAN")
    assert state["opt_d"]["param_groups"][0]["lr"] == 3e-4 and state["opt_g"]["param_groups"][0]["lr"] == 1e-4
    state = checkpoint.load(train.main(tiny_config(tmp_path / "b", steps=1, variant=variant, lr=1e-4, lr_d=0.0)),
                            "WGAN")
    assert state["opt_d"]["param_groups"][0]["lr"] == 1e-4


def test_resume_refuses_the_other_variant(tmp_path):
    train.main(tiny_config(tmp_path / "run", steps=1))
    with pytest.raises(checkpoint.CheckpointError, match="--variant gp"):
        train.main(tiny_config(tmp_path / "run", steps=2, variant="clip", resume="auto"))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *TINY, "--steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size < 400:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    state = checkpoint.load(out, "WGAN")
    assert 0 < state["step"] < 100000 and state["critic_updates"] == train.DEFAULT_N_CRITIC["gp"] * state["step"]
    assert "--resume auto" in stdout + stderr


def test_torchrun_two_processes_with_the_gradient_penalty(tmp_path):
    """DDP through the penalty's double backward: both ranks finish, stay identical, and log once."""
    out = tmp_path / "ddp"
    res = run_script("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541", "train.py",
                     *TINY, "--steps", "3", "--n-critic", "2", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "terminate called" not in res.stderr
    state = checkpoint.load(out, "WGAN")
    assert state["step"] == 3 and state["critic_updates"] == 6 and state["world_size"] == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank drew its own noise
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert all(torch.isfinite(v).all() for v in state["D"].values() if v.is_floating_point())


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
    (["--precision", "fp8"], "--precision"),
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
    assert res.returncode == 2 and "DCGAN checkpoint, not WGAN" in res.stderr
