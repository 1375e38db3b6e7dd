"""The training script end to end: run folder, sample.py --class, exact resume, signals, torchrun, CLI errors."""
# Adapted from DCGAN/tests/test_train.py: the contract tests (run folder, resume, SIGTERM, torchrun, CLI errors).
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sample as sample_script
import train
from model import sample
from shared import checkpoint, cli
from shared.data import to_uint8

HERE = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "16", "--batch-size", "8", "--z-dim", "8", "--g-width", "8", "--d-width", "8",
        "--threads", "1", "--precision", "fp32", "--log-every", "1", "--sample-every", "2", "--grid-columns", "4"]


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(image_size=16, batch_size=8, z_dim=8, g_width=8, d_width=8, threads=1, precision="fp32",
                log_every=1, sample_every=2, grid_columns=4, steps=steps, out=str(out), ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def run_script(*args, timeout=240, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=timeout,
                          env=env, **kwargs)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two steps of the default (projection) model on shapes: 3 classes."""
    return train.main(tiny_config(tmp_path_factory.mktemp("run") / "run", steps=2))


def test_two_steps_write_a_complete_run_folder(tiny_run):
    run = tiny_run
    assert json.loads((run / "config.json").read_text())["model_config"]["num_classes"] == 3  # shapes' classes
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_g"]])).all() for r in lines)
    grid = Image.open(run / "samples" / "step_0000002.png")
    assert grid.size == (2 + 4 * 18, 2 + 3 * 18)  # class-by-row: 3 rows (classes) x 4 columns of 16 px + padding
    assert list(run.glob("events.out.tfevents.*"))
    state = checkpoint.load(run, model="ConditionalGAN")
    assert state["step"] == 2 and state["classes"] == ["square", "circle", "triangle"]


def read_pngs(folder: Path) -> torch.Tensor:
    """(N, C, H, W) uint8 from the numbered PNGs in folder."""
    return torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)
                        for p in sorted(folder.glob("*.png"))])


def test_sample_py_class_k_writes_images_of_class_k_only(tiny_run, tmp_path):
    """The label reaches G: the files are G(z, K) for the seed's z, not G(z, k) of another class."""
    ckpt = checkpoint.load(tiny_run, "ConditionalGAN")
    for net in ("G", "G_ema"):  # a 2-step G has barely left identity BN: give each class its own bias
        for name, value in (ckpt[net] or {}).items():
            if name.endswith("beta.weight"):
                value.copy_(2.0 * torch.arange(3.0)[:, None].expand_as(value))
    distinct = checkpoint.save(tmp_path / "distinct.pt", ckpt)
    out = tmp_path / "k1"
    res = run_script("sample.py", "--checkpoint", str(distinct), "--class", "1", "--num", "5", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["class_1", "grid.png"]
    assert sorted(p.name for p in (out / "class_1").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    written = read_pngs(out / "class_1")
    G, _ = sample_script.load_generator(str(distinct), torch.device("cpu"))
    z = torch.randn(5, G.cfg.z_dim, generator=torch.Generator().manual_seed(0))
    own, other = (to_uint8(sample(G, torch.full((5,), k), z=z)) for k in (1, 2))
    assert (written.int() - own.int()).abs().max() <= 1  # PNG = G(z, 1) up to rounding
    assert (written.int() - other.int()).abs().max() > 10  # and clearly not class 2


def test_sample_py_class_list_makes_a_class_by_row_grid(tiny_run, tmp_path):
    out = sample_script.main(sample_script.parse_args(
        ["--checkpoint", str(tiny_run), "--class", "2", "0", "--num", "3", "--out", str(tmp_path / "s")]))
    assert sorted(p.name for p in out.iterdir()) == ["class_0", "class_2", "grid.png"]
    assert len(list((out / "class_0").glob("*.png"))) == 3
    assert Image.open(out / "grid.png").size == (2 + 3 * 18, 2 + 2 * 18)  # 2 rows (classes) x 3 columns
    assert sample_script.parse_args(["--classes", "0,2"]).classes == "0,2"


@pytest.mark.parametrize("args,needle", [(["--class", "3"], "out of range"), (["--class", "x"], "class indices")])
def test_sample_py_rejects_bad_classes(tiny_run, tmp_path, args, needle):
    res = run_script("sample.py", "--checkpoint", str(tiny_run), *args, "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("conditioning,loss", [("projection", "hinge"), ("acgan", "bce")])
def test_resume_is_exact(tmp_path, conditioning, loss):
    """train 4 steps == train 2, stop, resume from the checkpoint, train 2 more (spectral-norm vectors and G's
    moving average included)."""
    kw = dict(conditioning=conditioning, loss=loss, ema=0.999)
    straight = train.main(tiny_config(tmp_path / "a", steps=4, **kw))
    train.main(tiny_config(tmp_path / "b", steps=2, **kw))
    resumed = train.main(tiny_config(tmp_path / "b", steps=4, resume="auto", **kw))
    a, b = checkpoint.load(straight, "ConditionalGAN"), checkpoint.load(resumed, "ConditionalGAN")
    assert a["step"] == b["step"] == 4
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    assert any("_u" in k for k in a["D"])  # the power-iteration state is part of the checkpoint
    assert torch.equal(a["opt_g"]["state"][0]["exp_avg"], b["opt_g"]["state"][0]["exp_avg"])
    assert a["data"] == b["data"]


def test_ema_is_what_samples_use_and_lr_d_is_ds_rate(tmp_path):
    """The checkpoint keeps G's moving average beside G; sample.py/evaluate.py load it unless --raw; --lr-d sets
    D's Adam rate only; --ema 0 keeps no average and then G itself is loaded."""
    run = train.main(tiny_config(tmp_path / "e", steps=3, lr_d=5e-4, ema=0.999))
    state = checkpoint.load(run, "ConditionalGAN")
    assert state["opt_d"]["param_groups"][0]["lr"] == 5e-4 and state["opt_g"]["param_groups"][0]["lr"] == 2e-4
    key = "to_image.weight"
    assert not torch.equal(state["G_ema"][key], state["G"][key])  # an average lags the trained weights
    assert torch.equal(sample_script.load_generator(str(run), torch.device("cpu"))[0].state_dict()[key],
                       state["G_ema"][key])
    assert torch.equal(sample_script.load_generator(str(run), torch.device("cpu"), raw=True)[0].state_dict()[key],
                       state["G"][key])
    plain = checkpoint.load(train.main(tiny_config(tmp_path / "p", steps=1)), "ConditionalGAN")  # default: off
    assert plain["G_ema"] is None
    assert torch.equal(sample_script.load_generator(str(tmp_path / "p"), torch.device("cpu"))[0]
                       .state_dict()[key], plain["G"][key])


def test_d_steps_updates_d_that_many_times_per_g_step(tmp_path):
    """--d-steps k (n_dis): k Adam steps of D, each on its own real batch, per Adam step of G."""
    state = checkpoint.load(train.main(tiny_config(tmp_path / "k", steps=3, d_steps=2)), "ConditionalGAN")
    assert int(state["opt_d"]["state"][0]["step"]) == 6 and int(state["opt_g"]["state"][0]["step"]) == 3
    assert state["data"] == {"epoch": 0, "position": 6}  # six real batches read


def test_resume_with_other_conditioning_is_a_clear_error(tmp_path):
    train.main(tiny_config(tmp_path / "r", steps=1))
    with pytest.raises(checkpoint.CheckpointError, match="conditioning"):
        train.main(tiny_config(tmp_path / "r", steps=2, resume="auto", conditioning="acgan"))


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
    state = checkpoint.load(out, "ConditionalGAN")
    assert 0 < state["step"] < 100000
    assert "--resume auto" in stdout + stderr


def test_torchrun_two_processes(tmp_path):
    """AC-GAN under DDP: D returns (logit, class logits), both heads' gradients are all-reduced."""
    out = tmp_path / "ddp"
    res = run_script("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541", "train.py",
                     *TINY, "--steps", "3", "--conditioning", "acgan", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "terminate called" not in res.stderr
    state = checkpoint.load(out, "ConditionalGAN")
    assert state["step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank its own noise
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "24"], "power of two"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--conditioning", "concat"], "--conditioning"),
    (["--loss", "wasserstein"], "--loss"),
    (["--class-weight", "-1"], "--class-weight"),
    (["--ema", "1"], "--ema"),
    (["--lr-d", "-1"], "--lr-d"),
    (["--d-steps", "0"], "--d-steps"),
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


def test_unlabelled_folder_is_refused_with_one_line(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(images / f"{i}.png")
    res = run_script("train.py", "--dataset", f"folder:{images}", "--image-size", "16", "--batch-size", "2",
                     "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "no class labels" in res.stderr and "Traceback" not in res.stderr


def test_sample_py_rejects_foreign_checkpoints(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    res = run_script("sample.py", "--checkpoint", str(junk), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "corrupt" in res.stderr and "Traceback" not in res.stderr
    other = tmp_path / "other.pt"
    checkpoint.save(other, {"model": "DCGAN", "step": 1})
    res = run_script("sample.py", "--checkpoint", str(other), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "DCGAN checkpoint, not ConditionalGAN" in res.stderr
