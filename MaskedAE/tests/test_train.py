"""The training script end to end: run folder, sample.py (panels and inpainting), exact resume, signals, torchrun,
non-finite losses, resume with changed flags, CLI errors, the pretrained weights."""
# Adapted from DCGAN/tests/test_train.py: the same plumbing tests on the MAE's one network and one optimizer.
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
from model import Config, MaskedAutoencoder
from shared import checkpoint, cli, training

HERE = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "16", "--batch-size", "8", "--dim", "16", "--depth", "1", "--heads", "2",
        "--decoder-dim", "8", "--decoder-depth", "1", "--decoder-heads", "2", "--minutes", "0",
        "--threads", "1", "--precision", "fp32", "--log-every", "1", "--sample-every", "2"]


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(image_size=16, batch_size=8, dim=16, depth=1, heads=2, decoder_dim=8, decoder_depth=1,
                decoder_heads=2, minutes=0, threads=1, precision="fp32", log_every=1, sample_every=2, steps=steps,
                warmup_steps=2, out=str(out), ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def strict_json_lines(path: Path) -> list[dict]:
    def refuse(constant):
        raise ValueError(f"non-JSON constant {constant}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def exits_with(code: int, fn, *args) -> None:
    with pytest.raises(SystemExit) as exit_info:
        fn(*args)
    assert exit_info.value.code == code


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------- a run, sample.py

def test_two_steps_on_embedded_mnist_write_a_run_folder_that_sample_py_loads_and_inpaints_with(tmp_path, capsys):
    run = train.main(tiny_config(tmp_path / "run", steps=2))
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == "mnist" and config["data_size"] == 5000 and config["model_config"]["mask_ratio"] == 0.75
    lines = strict_json_lines(run / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2] and all(0 < r["loss"] < 10 for r in lines)
    assert [r["lr"] for r in lines] == [pytest.approx(1e-3 * 1.5 / 2), pytest.approx(1.5e-3)]  # warm-up of 2 steps
    assert (run / "samples" / "step_0000002.png").is_file() and (run / "progress.gif").is_file()
    state = checkpoint.load(run, "MaskedAE")
    assert state["step"] == 2 and state["model_config"]["channels"] == 1
    assert f"python sample.py --checkpoint {run}" in capsys.readouterr().out

    from PIL import Image
    out = tmp_path / "samples"
    sample_script.cli_main(["--checkpoint", str(run), "--num", "3", "--ratios", "0.5,0.9", "--out", str(out)])
    assert {p.name for p in out.glob("*.png")} == {"reconstructions.png", "reconstructions_r0.50.png",
                                                    "reconstructions_r0.90.png"}
    assert Image.open(out / "reconstructions.png").size == (3 * 18 + 2, 8 * 18 + 2)  # 8 rows (2 ratios x 4) of 3
    digit = tmp_path / "digit.png"
    Image.fromarray((torch.rand(40, 40) * 255).byte().numpy()).save(digit)
    sample_script.cli_main(["--checkpoint", str(run), "--image", str(digit), "--box", "0,0,20,20", "--out", str(out),
                            "--scale", "2"])
    assert "hid 4 of 16 patches" in capsys.readouterr().out  # the box is the top-left quarter of a 40x40 image
    assert Image.open(out / "inpainted_result.png").size == (32, 32) and (out / "inpainted.png").is_file()
    sample_script.cli_main(["--checkpoint", str(run), "--image", str(digit), "--mask-ratio", "0.5", "--invert",
                            "--out", str(out)])
    assert "hid 8 of 16 patches" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["--image", "x.png"], "--box"),
    (["--box", "1,2,3"], "--box"),
    (["--box", "0,0,4,4"], "--image"),
    (["--ratios", "0.5,1.2"], "--ratios"),
    (["--mask-ratio", "1"], "--mask-ratio"),
])
def test_sample_py_bad_mask_flags_exit_2_with_one_line(args, needle, tmp_path, capsys):
    exits_with(2, sample_script.cli_main, [*args, "--out", str(tmp_path / "o")])
    assert needle in one_error_line(capsys)


def test_resume_is_exact_and_logging_never_changes_training(tmp_path):
    """6 straight steps logged and sampled every step == 3 steps, stop, resume, 3 more, logged every 3rd step:
    the masks come from the saved RNG, the batches from the saved data position, the lr from the step."""
    straight = train.main(tiny_config(tmp_path / "a", steps=6, log_every=1, sample_every=1))
    sparse = dict(log_every=3, sample_every=3)
    train.main(tiny_config(tmp_path / "b", steps=3, **sparse))
    resumed = train.main(tiny_config(tmp_path / "b", steps=6, resume="auto", **sparse))
    a, b = checkpoint.load(straight, "MaskedAE"), checkpoint.load(resumed, "MaskedAE")
    assert a["step"] == b["step"] == 6
    for k in a["mae"]:
        assert torch.equal(a["mae"][k], b["mae"][k]), f"{k} differs after resume"
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
    state = checkpoint.load(out, "MaskedAE")
    assert 0 < state["step"] < 100000 and not training.non_finite_entries(state["mae"])
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout + stderr
    assert "--resume auto" in stdout + stderr


def test_torchrun_two_processes_keep_equal_weights_and_draw_their_own_masks(tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "train.py", *TINY, "--steps", "4", "--out", str(out)],
                          cwd=HERE, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "terminate called" not in proc.stderr
    state = checkpoint.load(out, "MaskedAE")
    assert state["step"] == 4 and state["world_size"] == 2
    assert len(state["replicas"]) == 2 and state["replicas"][0] == state["replicas"][1]  # identical weights
    fresh = MaskedAutoencoder(Config(**state["model_config"]))
    fresh.load_state_dict(state["mae"])
    assert state["replicas"][0]["mae"] == training.parameters_digest(fresh)
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank its own masks
    assert [r["step"] for r in strict_json_lines(out / "metrics.jsonl")] == [1, 2, 3, 4]  # rank 0 alone logs


# ---------------------------------------------------------------- non-finite losses, resume with other flags

def test_a_nan_loss_skips_that_update(tmp_path, monkeypatch, capsys):
    two = checkpoint.load(train.main(tiny_config(tmp_path / "two", steps=2)), "MaskedAE")
    real, count = train.mae_loss, [0]

    def loss(*args, **kwargs):
        count[0] += 1
        value, pred, mask = real(*args, **kwargs)
        return (value * float("nan") if count[0] == 3 else value), pred, mask
    monkeypatch.setattr(train, "mae_loss", loss)
    three = checkpoint.load(train.main(tiny_config(tmp_path / "nan", steps=3)), "MaskedAE")
    for k, v in two["mae"].items():
        assert torch.equal(v, three["mae"][k]), k  # step 3's update was skipped
    assert "step 3: non-finite loss; update skipped" in capsys.readouterr().out


def test_resume_with_a_new_lr_takes_it_and_a_new_mask_ratio_is_refused(tmp_path, capsys):
    train.main(tiny_config(tmp_path / "run", steps=2))
    run = train.main(tiny_config(tmp_path / "run", steps=3, lr=1e-3, resume="auto"))
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-3
    assert strict_json_lines(run / "metrics.jsonl")[-1]["lr"] == pytest.approx(1e-3)  # step 3: past the warm-up
    capsys.readouterr()
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "run", steps=4, resume="auto", mask_ratio=0.5))
    assert "cannot resume" in (line := one_error_line(capsys)) and "--mask-ratio" in line


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "30"], "multiple of --patch-size"),
    (["--dim", "30", "--heads", "4"], "--heads"),
    (["--mask-ratio", "1.0"], "--mask-ratio"),
    (["--min-lr", "1"], "--min-lr"),
    (["--decay-steps", "0"], "--decay-steps"),
    (["--beta2", "1"], "--beta2"),
    (["--mask-rat", "0.5"], "--mask-rat"),  # no abbreviated flags
])
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path, capsys):
    exits_with(2, cli.parse, train.TrainConfig, [*args, "--out", str(tmp_path / "x")], train.check)
    assert needle in one_error_line(capsys)


# ---------------------------------------------------------------- pretrained weights

def test_sample_pretrained_loads_an_exported_run(tmp_path, monkeypatch, capsys):
    from shared import pretrained

    run = train.main(tiny_config(tmp_path / "run", steps=1))
    exported = pretrained.export(str(run), "MaskedAE", ["mae"], str(tmp_path / "pretrained" / "mae.pt"))
    monkeypatch.setattr(sample_script, "PRETRAINED", exported)
    out = tmp_path / "samples"
    sample_script.cli_main(["--pretrained", "--num", "2", "--out", str(out)])
    assert (out / "reconstructions_r0.75.png").is_file() and "step 1, --dataset mnist" in capsys.readouterr().out
    model, _ = sample_script.load_pretrained(torch.device("cpu"))
    saved = checkpoint.load(run, "MaskedAE")["mae"]
    for k, v in model.state_dict().items():
        assert torch.allclose(v.float(), saved[k].float(), rtol=1e-3, atol=1e-4), k


def test_sample_pretrained_without_the_file_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "pretrained" / "mae.pt"
    monkeypatch.setattr(sample_script, "PRETRAINED", missing)
    exits_with(2, sample_script.cli_main, ["--pretrained", "--out", str(tmp_path / "o")])
    line = one_error_line(capsys)
    assert str(missing) in line and "train" in line and "fetch" in line


def test_shipped_pretrained_mae_loads_and_reconstructs_held_out_digits_better_than_a_mean_fill():
    path = HERE / "pretrained" / "mae.pt"
    assert path.is_file(), f"{path} not shipped yet"
    assert path.stat().st_size < 2_500_000
    state = torch.load(path, weights_only=True)
    assert state["model"] == "MaskedAE" and all(v.dtype == torch.float16 for v in state["mae"].values()
                                                if v.is_floating_point())
    model, _ = sample_script.load_pretrained(torch.device("cpu"))
    x = sample_script.held_out("mnist", "", model.cfg.image_size, 32, seed=0)
    from evaluate import masked_mse
    mse, mean_fill = masked_mse(model, x, 0.75, seed=0)
    assert mse < 0.5 * mean_fill  # a trained MAE, not the untrained one
