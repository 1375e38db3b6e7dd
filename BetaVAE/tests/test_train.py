"""The training script end to end: run folder and traversals, sample.py, exact resume, signals, torchrun,
non-finite losses, resume with changed flags, tiny datasets, CLI errors, the pretrained weights."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import sample as sample_script
import train
from model import BetaVAE, Config
from shared import checkpoint, cli, training
from shared.testing import children, environ, exits_with, one_error_line, strict_json_lines

HERE = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "mnist", "--image-size", "16", "--batch-size", "8", "--z-dim", "4", "--width", "8",
        "--hidden", "16",
        "--threads", "1", "--precision", "fp32", "--log-every", "1", "--sample-every", "2"]


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(dataset="mnist", image_size=16, batch_size=8, z_dim=4, width=8, hidden=16, threads=1, precision="fp32",
                log_every=1, sample_every=2, steps=steps, out=str(out), ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def parameters(state: dict) -> dict[str, torch.Tensor]:
    vae = BetaVAE(Config(**state["model_config"]))
    vae.load_state_dict(state["vae"])
    return {k: v.detach().clone() for k, v in vae.named_parameters()}


# ---------------------------------------------------------------- runs on real data

def test_two_steps_on_shapes_write_a_complete_run_folder_with_traversals_that_sample_py_loads(tmp_path, capsys):
    run = train.main(tiny_config(tmp_path / "run", steps=2, dataset="shapes"))  # train.py's default dataset
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == "shapes" and config["objective"] == "beta" and config["data_size"] == 50_000
    lines = strict_json_lines(run / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2]
    assert all(r["loss"] == pytest.approx(r["recon"] + 4.0 * r["kl"], rel=1e-4) for r in lines)  # beta 4
    assert all(len([k for k in r if k.startswith("kl_")]) == 4 for r in lines)  # KL per latent dimension
    for tag in ("samples", "reconstructions", "traversals"):
        assert (run / tag / "step_0000002.png").is_file(), tag
    assert (run / "progress.gif").is_file() and list(run.glob("events.out.tfevents.*"))
    with Image.open(run / "traversal.gif") as gif:
        assert gif.n_frames == 2 * 10 - 2  # forth over 10 values and back
    with Image.open(run / "traversal.png") as png:
        assert png.size == (10 * 18 + 2, 4 * 18 + 2)  # 10 values x 4 latents of 16 px, 2 px padding
    order = json.loads((run / "traversal.json").read_text())
    assert sorted(order["order"]) == [0, 1, 2, 3] and order["kl_nats"] == sorted(order["kl_nats"], reverse=True)
    summary = capsys.readouterr().out
    assert "done: 2 steps" in summary and f"python sample.py --checkpoint {run}" in summary

    out = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=5, out=str(out), bases=3, steps=4))
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(5)]
    for name in ("grid.png", "reconstructions.png", "traversal.png", "traversal.gif", "traversal.json"):
        assert (out / name).is_file(), name
    with Image.open(out / "traversal.png") as png:
        assert png.size == (4 * 18 + 2, 4 * 18 + 2)


def test_capacity_objective_logs_c_rising_and_the_loss_of_burgess_eq_8(tmp_path):
    run = train.main(tiny_config(tmp_path / "run", steps=4, objective="capacity", gamma=10.0, capacity_max=8.0,
                                 capacity_steps=4))
    lines = strict_json_lines(run / "metrics.jsonl")
    assert [r["capacity"] for r in lines] == [0.0, 2.0, 4.0, 6.0]  # C(step) before each update: linear
    for r in lines:
        assert r["loss"] == pytest.approx(r["recon"] + 10.0 * abs(r["kl"] - r["capacity"]), rel=1e-4)


def test_two_steps_on_embedded_mnist(tmp_path):
    run = train.main(tiny_config(tmp_path / "run", steps=2))
    state = checkpoint.load(run, "BetaVAE")
    assert state["step"] == 2 and state["model_config"]["channels"] == 1
    config = json.loads((run / "config.json").read_text())
    assert "embedded" in config["data_source"] and config["data_size"] == 5000
    assert all(0 < r["recon"] < 16 * 16 for r in strict_json_lines(run / "metrics.jsonl"))  # < log 2 per pixel-ish


def test_resume_is_exact_and_logging_never_changes_training(tmp_path):
    """6 straight steps logged and sampled every step == 3 steps, stop, resume, 3 more, logged every 3rd step."""
    straight = train.main(tiny_config(tmp_path / "a", steps=6, log_every=1, sample_every=1))
    sparse = dict(log_every=3, sample_every=3)
    train.main(tiny_config(tmp_path / "b", steps=3, **sparse))
    resumed = train.main(tiny_config(tmp_path / "b", steps=6, resume="auto", **sparse))
    a, b = checkpoint.load(straight, "BetaVAE"), checkpoint.load(resumed, "BetaVAE")
    assert a["step"] == b["step"] == 6
    for k in a["vae"]:
        assert torch.equal(a["vae"][k], b["vae"][k]), f"vae.{k} differs after resume"
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
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size < 1000:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    state = checkpoint.load(out, "BetaVAE")
    assert 0 < state["step"] < 100000 and not training.non_finite_entries(state["vae"])
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout + stderr
    assert "--resume auto" in stdout + stderr
    assert (out / "traversal.png").is_file()  # the end-of-run traversals are written on a signal too


def test_torchrun_two_processes_stop_together_when_one_rank_is_signalled(tmp_path):
    """2 CPU processes; SIGTERM to rank 1 only: both ranks stop at the same step, one good checkpoint holds
    identical replicas (digests of the saved weights), and the job ends."""
    out = tmp_path / "ddp"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py", *TINY, "--objective", "capacity", "--steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 240
        while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size < 1500:
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
    state = checkpoint.load(out, "BetaVAE")
    assert 2 < state["step"] < 100000 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout + stderr  # rank 0 heard rank 1's signal
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank drew its own eps
    assert [r["step"] for r in strict_json_lines(out / "metrics.jsonl")] == list(range(1, state["step"] + 1))
    assert len(state["replicas"]) == 2 and state["replicas"][0] == state["replicas"][1]
    fresh = BetaVAE(Config(**state["model_config"]))
    fresh.load_state_dict(state["vae"])
    assert state["replicas"][0]["vae"] == training.parameters_digest(fresh)


# ---------------------------------------------------------------- non-finite losses

def nan_on_calls(monkeypatch, calls: set[int] | None) -> None:
    """train.beta_vae_loss returns nan on the given calls (1-based; None = every call)."""
    real_loss, count = train.beta_vae_loss, [0]

    def loss(*args):
        count[0] += 1
        value = real_loss(*args)
        return value * float("nan") if calls is None or count[0] in calls else value
    monkeypatch.setattr(train, "beta_vae_loss", loss)


def test_a_nan_loss_skips_that_update_and_keeps_metrics_strict_json(tmp_path, monkeypatch, capsys):
    two = checkpoint.load(train.main(tiny_config(tmp_path / "two", steps=2)), "BetaVAE")
    nan_on_calls(monkeypatch, {3})
    run = train.main(tiny_config(tmp_path / "nan", steps=3))
    three = checkpoint.load(run, "BetaVAE")
    for k, v in parameters(three).items():  # the update of step 3 was skipped
        assert torch.equal(v, parameters(two)[k]), k
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
    assert captured.out.count("update skipped") == 5
    saved = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert saved and all(not training.non_finite_entries(checkpoint.load(p, "BetaVAE")) for p in saved)
    assert checkpoint.load(tmp_path / "run", "BetaVAE")["step"] == 4


# ---------------------------------------------------------------- resume with other flags

def test_resume_with_a_new_lr_uses_it_and_records_it(tmp_path, capsys):
    train.main(tiny_config(tmp_path / "run", steps=2))
    run = train.main(tiny_config(tmp_path / "run", steps=3, lr=1e-3, resume="auto"))
    state = checkpoint.load(run, "BetaVAE")
    assert state["step"] == 3 and all(g["lr"] == 1e-3 for g in state["opt"]["param_groups"])
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-3
    assert "--lr 0.0005 -> 0.001" in capsys.readouterr().out


@pytest.mark.parametrize("change", [{"batch_size": 4}, {"width": 16}, {"beta": 1.0}])
def test_resume_with_a_setting_that_cannot_change_exits_2_with_one_line(tmp_path, capsys, change):
    train.main(tiny_config(tmp_path / "run", steps=1))
    capsys.readouterr()
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "run", steps=2, resume="auto", **change))
    flag = "--" + next(iter(change)).replace("_", "-")
    assert "cannot resume" in (line := one_error_line(capsys)) and flag in line


# ---------------------------------------------------------------- small and missing data, bad flags

def test_a_folder_of_five_images_trains_to_the_end_and_samples(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8).numpy()).save(images / f"{i}.png")
    run = train.main(tiny_config(tmp_path / "run", steps=3, batch_size=4, dataset=f"folder:{images}"))
    state = checkpoint.load(run, "BetaVAE")
    assert state["step"] == 3 and state["model_config"]["channels"] == 3
    assert json.loads((run / "config.json").read_text())["data_size"] == 5
    out = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=4, out=str(out), bases=2, steps=3))
    assert len(list(out.glob("0*.png"))) == 4 and (out / "traversal.gif").is_file()


@pytest.mark.parametrize("root", ["/nonexistent/data", "empty"])
def test_missing_mnist_files_exit_2_with_one_line_naming_the_path_and_flag(tmp_path, capsys, root):
    root = str(tmp_path) if root == "empty" else root
    cfg = tiny_config(tmp_path / "x", steps=1, dataset="mnist", data_root=root)
    exits_with(2, training.run_main, train.main, cfg)
    line = one_error_line(capsys)
    assert root in line and "--data-root" in line


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "24"], "power of two"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--objective", "tc"], "--objective"),
    (["--beta", "-1"], "--beta"),
    (["--beta", "nan"], "--beta"),
    (["--z-dim", "1"], "--z-dim"),
    (["--capacity-st", "2"], "--capacity-st"),  # no abbreviated flags
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
    assert "VAE checkpoint, not BetaVAE" in one_error_line(capsys)
    no_weights = tmp_path / "no_weights.pt"
    checkpoint.save(no_weights, {"model": "BetaVAE", "step": 1, "model_config": {"image_size": 16}})
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(no_weights), *out])
    assert "no weights for 'vae'" in one_error_line(capsys)


def test_sample_pretrained_loads_an_exported_run(tmp_path, monkeypatch, capsys):
    from shared import pretrained

    run = train.main(tiny_config(tmp_path / "run", steps=1))
    exported = pretrained.export(str(run), "BetaVAE", ["vae"], str(tmp_path / "pretrained" / "vae.pt"))
    monkeypatch.setattr(sample_script, "PRETRAINED", exported)
    out = tmp_path / "samples"
    sample_script.cli_main(["--pretrained", "--num", "3", "--bases", "2", "--out", str(out)])
    assert len(list(out.glob("0*.png"))) == 3 and "step 1, --dataset mnist" in capsys.readouterr().out
    assert (out / "traversal.png").is_file()
    vae, _ = sample_script.load_pretrained(torch.device("cpu"))
    saved = checkpoint.load(run, "BetaVAE")["vae"]
    for k, v in vae.state_dict().items():  # the fp16 copy of the run's weights
        assert torch.allclose(v.float(), saved[k].float(), rtol=1e-3, atol=1e-4), k


def test_sample_pretrained_without_the_file_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "pretrained" / "vae.pt"
    monkeypatch.setattr(sample_script, "PRETRAINED", missing)
    exits_with(2, sample_script.cli_main, ["--pretrained", "--out", str(tmp_path / "o")])
    line = one_error_line(capsys)
    assert str(missing) in line and "train" in line and "fetch" in line


def test_shipped_pretrained_vae_loads_safely_and_decodes(tmp_path):
    """Fails until pretrained/vae.pt (from the default 10-minute shapes run) is shipped."""
    path = HERE / "pretrained" / "vae.pt"
    assert path.is_file(), f"{path} not shipped yet"
    assert path.stat().st_size < 2_000_000
    state = torch.load(path, weights_only=True)
    assert state["model"] == "BetaVAE" and all(v.dtype == torch.float16 for v in state["vae"].values()
                                               if v.is_floating_point())
    vae, _ = sample_script.load_pretrained(torch.device("cpu"))
    x = sample_script.sample(vae, 4, rng=torch.Generator().manual_seed(0))
    cfg = vae.cfg
    assert x.shape == (4, cfg.channels, cfg.image_size, cfg.image_size) and torch.isfinite(x).all()
    assert x.std() > 0.1  # a trained decoder, not a constant image
