"""The training script end to end: run folder, label dropout in the loop, sample.py's classes and grid, exact
resume (EMA included), signals, torchrun, non-finite losses, labelled and unlabelled folders, CLI errors, the
pretrained EMA U-Net."""
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
from model import Config, UNet
from shared import checkpoint, cli, training
from shared.testing import children, environ, exits_with, one_error_line, strict_json_lines

HERE = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "8", "--batch-size", "8", "--width", "8", "--mults", "1,2", "--attn", "4",
        "--timesteps", "20", "--sample-steps", "2", "--grid-columns", "2", "--threads", "1", "--precision", "fp32",
        "--log-every", "1", "--sample-every", "2"]


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(image_size=8, batch_size=8, width=8, mults="1,2", attn="4", timesteps=20, sample_steps=2,
                grid_columns=2, threads=1, precision="fp32", log_every=1, sample_every=2, steps=steps, out=str(out),
                ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def image_folder(root: Path, classes: list[str], per_class: int = 3) -> Path:
    """An ImageFolder-style tree of random RGB PNGs (no classes: the images directly in root)."""
    for name in classes or [""]:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (12, 12, 3), dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


# ---------------------------------------------------------------- a run, on real data

def test_a_tiny_run_on_embedded_mnist_writes_a_run_folder_and_sample_py_draws_a_class_by_row_grid(tmp_path, capsys):
    run = train.main(tiny_config(tmp_path / "run", steps=2))  # the default dataset: the embedded MNIST copy
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == "mnist" and config["p_uncond"] == 0.1 and config["data_size"] == 5000
    lines = strict_json_lines(run / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2] and all(0 < r["loss"] < 10 for r in lines)
    grid_png = Image.open(run / "samples" / "step_0000002.png")
    assert grid_png.size == (2 + 2 * 10, 2 + 10 * 10)  # 10 class rows x --grid-columns 2 of 8x8 (2 px padding)
    assert (run / "progress.gif").is_file()
    state = checkpoint.load(run, model="ConditionalDiffusion")
    assert state["model_config"]["num_classes"] == 10 and state["classes"][3] == "3 - three"
    assert not torch.equal(state["ema"]["conv_in.weight"], state["unet"]["conv_in.weight"])  # a real average
    assert f"python sample.py --checkpoint {run}" in capsys.readouterr().out

    out = tmp_path / "samples"
    sample_script.cli_main(["--checkpoint", str(run), "--class", "1", "7", "--guidance", "3", "--num", "3",
                            "--steps", "2", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["class_1", "class_7", "grid.png", "trajectory.png"]
    assert sorted(p.name for p in (out / "class_7").iterdir()) == [f"{i:06d}.png" for i in range(3)]
    assert Image.open(out / "grid.png").size == (2 + 3 * 10, 2 + 2 * 10)  # 2 class rows x 3 columns
    assert "class 1 (1 - one), 7 (7 - seven) at guidance w = 3" in capsys.readouterr().out
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), classes="0", num=2, steps=0, guidance=0.0,
                                                  trajectory=False, out=str(tmp_path / "anc")))  # ancestral, uncond
    assert len(list((tmp_path / "anc" / "class_0").glob("*.png"))) == 2


def test_the_training_loop_drops_labels_at_the_p_uncond_it_was_given(tmp_path, monkeypatch):
    seen = []
    real = train.drop_labels

    def recording(y, p, null, generator=None):
        c = real(y, p, null, generator)
        seen.append((p, null, y.clone(), c))
        return c
    monkeypatch.setattr(train, "drop_labels", recording)
    run = train.main(tiny_config(tmp_path / "run", steps=20, batch_size=16, p_uncond=0.5, sample_every=1000))
    assert len(seen) == 20 and all(p == 0.5 and null == 10 for p, null, _, _ in seen)
    y, c = torch.cat([s[2] for s in seen]), torch.cat([s[3] for s in seen])
    assert abs((c == 10).float().mean().item() - 0.5) < 5 * (0.25 / len(c)) ** 0.5  # 320 labels, +-0.14
    assert torch.equal(c[c != 10], y[c != 10])
    logged = [r["null_fraction"] for r in strict_json_lines(run / "metrics.jsonl")]
    assert logged == pytest.approx([(s[3] == 10).float().mean().item() for s in seen])


@pytest.mark.parametrize("variant", [{}, {"schedule": "cosine", "prediction": "v"}], ids=["eps", "cosine-v"])
def test_resume_is_exact_and_logging_never_changes_training(tmp_path, variant):
    """6 straight steps logged and sampled every step == 3 steps, stop, resume, 3 more, logged every 3rd step:
    if logging, sampling or the label dropout's draws were not reproduced, the weights (and EMA) would differ."""
    straight = train.main(tiny_config(tmp_path / "a", steps=6, log_every=1, sample_every=1, **variant))
    sparse = dict(log_every=3, sample_every=3, **variant)
    train.main(tiny_config(tmp_path / "b", steps=3, **sparse))
    resumed = train.main(tiny_config(tmp_path / "b", steps=6, resume="auto", **sparse))
    a, b = checkpoint.load(straight, "ConditionalDiffusion"), checkpoint.load(resumed, "ConditionalDiffusion")
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
    state = checkpoint.load(out, "ConditionalDiffusion")
    assert 0 < state["step"] < 100000 and not training.non_finite_entries(state["ema"])
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout + stderr


def test_torchrun_two_processes_stop_together_with_equal_weights(tmp_path):
    """2 CPU processes; SIGTERM to rank 1 only: both ranks stop at the same step and the checkpoint holds
    identical replicas of the U-Net and of its EMA (digests of the saved weights); each rank drew its own noise."""
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
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "terminate called" not in stderr
    state = checkpoint.load(out, "ConditionalDiffusion")
    assert 2 < state["step"] < 100000 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert len(state["replicas"]) == 2 and state["replicas"][0] == state["replicas"][1]
    for net in ("unet", "ema"):
        fresh = UNet(Config(**state["model_config"]))
        fresh.load_state_dict(state[net])
        assert state["replicas"][0][net] == training.parameters_digest(fresh), net


# ---------------------------------------------------------------- non-finite losses, datasets, flags

def test_a_nan_loss_skips_that_update(tmp_path, monkeypatch, capsys):
    two = checkpoint.load(train.main(tiny_config(tmp_path / "two", steps=2)), "ConditionalDiffusion")
    real_loss, count = train.l_simple, [0]

    def loss(*args):
        count[0] += 1
        return real_loss(*args) * (float("nan") if count[0] == 3 else 1.0)
    monkeypatch.setattr(train, "l_simple", loss)
    run = train.main(tiny_config(tmp_path / "nan", steps=3))
    three = checkpoint.load(run, "ConditionalDiffusion")
    for net in ("unet", "ema"):
        for k, v in three[net].items():
            assert torch.equal(v, two[net][k]), (net, k)
    assert strict_json_lines(run / "metrics.jsonl")[2]["loss"] is None
    assert "step 3: non-finite loss; update skipped" in capsys.readouterr().out


def test_a_labelled_folder_trains_with_its_classes_and_an_unlabelled_one_exits_2(tmp_path, capsys):
    folder = image_folder(tmp_path / "labelled", ["cats", "dogs", "owls"])
    run = train.main(tiny_config(tmp_path / "run", steps=2, batch_size=4, dataset=f"folder:{folder}"))
    state = checkpoint.load(run, "ConditionalDiffusion")
    assert state["model_config"]["num_classes"] == 3 and state["model_config"]["channels"] == 3
    assert state["classes"] == ["cats", "dogs", "owls"] and state["unet"]["class_emb.weight"].shape[0] == 4
    unlabelled = image_folder(tmp_path / "flat", [])
    capsys.readouterr()
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "x", steps=1, dataset=f"folder:{unlabelled}"))
    assert "no class labels" in one_error_line(capsys)


@pytest.mark.parametrize("args,needle", [
    (["--p-uncond", "1"], "--p-uncond"),
    (["--image-size", "18"], "divisible"),
    (["--mults", "1,x"], "--mults"),
    (["--grid-columns", "0"], "--grid-columns"),
    (["--p-unc", "0.2"], "--p-unc"),  # no abbreviated flags
])
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path, capsys):
    exits_with(2, cli.parse, train.TrainConfig, [*args, "--out", str(tmp_path / "x")], train.check)
    assert needle in one_error_line(capsys)


def test_resume_with_another_p_uncond_exits_2(tmp_path, capsys):
    train.main(tiny_config(tmp_path / "run", steps=1))
    capsys.readouterr()
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "run", steps=2, resume="auto", p_uncond=0.3))
    assert "cannot resume" in (line := one_error_line(capsys)) and "--p-uncond" in line


# ---------------------------------------------------------------- sample.py: classes, pretrained weights

def test_sample_py_rejects_a_class_out_of_range_and_a_negative_guidance(tmp_path, capsys):
    run = train.main(tiny_config(tmp_path / "run", steps=1))
    capsys.readouterr()
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(run), "--class", "10", "--out", str(tmp_path / "o")])
    assert "--class 10 is out of range" in one_error_line(capsys)
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(run), "--guidance", "-1", "--out", str(tmp_path / "o")])
    assert "--guidance" in one_error_line(capsys)


def test_sample_pretrained_loads_an_exported_run(tmp_path, monkeypatch, capsys):
    from shared import pretrained

    run = train.main(tiny_config(tmp_path / "run", steps=1))
    exported = pretrained.export(str(run), "ConditionalDiffusion", ["ema:unet"],
                                 str(tmp_path / "pretrained" / "ema_unet.pt"))
    monkeypatch.setattr(sample_script, "PRETRAINED", exported)
    out = tmp_path / "samples"
    sample_script.cli_main(["--pretrained", "--class", "2", "--num", "3", "--steps", "2", "--out", str(out)])
    assert len(list((out / "class_2").glob("*.png"))) == 3 and "step 1, --dataset mnist" in capsys.readouterr().out
    net, state = sample_script.load_pretrained(torch.device("cpu"))
    assert state["classes"][2] == "2 - two"
    saved = checkpoint.load(run, "ConditionalDiffusion")["ema"]
    for k, v in net.state_dict().items():  # the fp16 copy of the run's EMA U-Net
        assert torch.allclose(v.float(), saved[k].float(), rtol=1e-3, atol=1e-4), k


def test_shipped_pretrained_ema_unet_loads_safely_and_samples_each_class():
    """Fails until pretrained/ema_unet.pt (the EMA U-Net of the default 10-minute MNIST run) is shipped."""
    path = HERE / "pretrained" / "ema_unet.pt"
    assert path.is_file(), f"{path} not shipped yet"
    assert path.stat().st_size < 2_000_000
    state = torch.load(path, weights_only=True)
    assert state["model"] == "ConditionalDiffusion" and all(v.dtype == torch.float16 for v in state["unet"].values()
                                                            if v.is_floating_point())
    net, _ = sample_script.load_pretrained(torch.device("cpu"))
    x, _ = sample_script.sample(net, torch.tensor([0, 1]), 3.0, 4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, net.cfg.channels, net.cfg.image_size, net.cfg.image_size) and torch.isfinite(x).all()
    assert x.std() > 0.1
