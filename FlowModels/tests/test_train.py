"""The training script end to end: run folder, sample.py, learning, exact resume, signals, torchrun, non-finite
losses, resume with changed flags, tiny datasets, CLI errors, the pretrained flow."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sample as sample_script
import train
from model import Config, Flow
from shared import checkpoint, cli, training
from shared.testing import exits_with, one_error_line, strict_json_lines, wait_for

HERE = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "16", "--batch-size", "8", "--levels", "2", "--depth", "1", "--width", "8",
        "--threads", "1", "--precision", "fp32", "--log-every", "1", "--sample-every", "2", "--minutes", "0",
        "--init-batch", "16"]


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(image_size=16, batch_size=8, levels=2, depth=1, width=8, threads=1, precision="fp32", log_every=1,
                sample_every=2, steps=steps, minutes=0, out=str(out), ckpt_every=1000, init_batch=16)
    return train.TrainConfig(**{**base, **overrides})


# ---------------------------------------------------------------- a run, on real data

@pytest.mark.parametrize("flow", ["glow", "realnvp"])
def test_two_steps_on_embedded_mnist_write_a_complete_run_folder_that_sample_py_loads(tmp_path, capsys, flow):
    run = train.main(tiny_config(tmp_path / "run", steps=2, flow=flow))  # the default dataset: embedded MNIST
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 2 and config["dataset"] == "mnist" and config["model_config"]["flow"] == flow
    assert "embedded" in config["data_source"] and config["data_size"] == 5000
    lines = strict_json_lines(run / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2]
    assert all(0.5 < r["bits_per_dim"] < 12 and r["grad_norm"] > 0 for r in lines)
    assert (run / "samples" / "step_0000002.png").is_file() and (run / "progress.gif").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    state = checkpoint.load(run, model="FlowModels")
    assert state["step"] == 2 and state["model_config"]["image_size"] == 16 and state["model_config"]["channels"] == 1
    summary = capsys.readouterr().out
    assert "done: 2 steps" in summary and f"python sample.py --checkpoint {run}" in summary

    out = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=5, out=str(out), interpolations=2))
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(5)]
    for name in ("grid", "temperatures", "interpolation", "reconstruction"):
        assert (out / f"{name}.png").is_file(), name
    assert "max |f^-1(f(x)) - x| = " in capsys.readouterr().out


def test_sixty_steps_lower_the_bits_per_dim_well_below_the_start(tmp_path):
    """Maximum likelihood works: the training loss falls (this tiny flow starts near 8 bits/dim on MNIST)."""
    run = train.main(tiny_config(tmp_path / "run", steps=60, sample_every=1000, lr=3e-3, warmup=5))
    bpd = [r["bits_per_dim"] for r in strict_json_lines(run / "metrics.jsonl")]
    assert sum(bpd[-5:]) / 5 < sum(bpd[:5]) / 5 - 1.0, bpd


def test_actnorm_is_initialised_from_data_at_the_start_and_not_again_on_resume(tmp_path):
    run = train.main(tiny_config(tmp_path / "run", steps=1, lr=1e-12, warmup=0))
    state = checkpoint.load(run, "FlowModels")
    inits = [k for k in state["flow"] if k.endswith("initialized")]
    assert inits and all(bool(state["flow"][k]) for k in inits)
    scales = [v for k, v in state["flow"].items() if k.endswith("log_scale")]
    assert all(v.abs().max() > 0.01 for v in scales)  # set from data, not left at 0
    resumed = checkpoint.load(train.main(tiny_config(tmp_path / "run", steps=2, lr=1e-12, warmup=0,
                                                     resume="auto")), "FlowModels")
    for k, v in state["flow"].items():  # lr ~ 0: a re-initialisation would be the only change
        if k.endswith("log_scale"):
            assert torch.allclose(resumed["flow"][k], v, atol=1e-6), k


@pytest.mark.parametrize("flow", ["glow", "realnvp"])
def test_resume_is_exact_and_logging_never_changes_training(tmp_path, flow):
    """6 straight steps logged and sampled every step == 3 steps, stop, resume, 3 more, logged every 3rd step:
    if logging or sampling consumed RNG, the weights would differ."""
    straight = train.main(tiny_config(tmp_path / "a", steps=6, log_every=1, sample_every=1, flow=flow))
    sparse = dict(log_every=3, sample_every=3, flow=flow)
    train.main(tiny_config(tmp_path / "b", steps=3, **sparse))
    resumed = train.main(tiny_config(tmp_path / "b", steps=6, resume="auto", **sparse))
    a, b = checkpoint.load(straight, "FlowModels"), checkpoint.load(resumed, "FlowModels")
    assert a["step"] == b["step"] == 6
    for k in a["flow"]:
        assert torch.equal(a["flow"][k], b["flow"][k]), f"{k} differs after resume"
    assert torch.equal(a["opt"]["state"][0]["exp_avg"], b["opt"]["state"][0]["exp_avg"])
    assert a["data"] == b["data"]
    assert [r["step"] for r in strict_json_lines(resumed / "metrics.jsonl")] == [3, 6]


# ---------------------------------------------------------------- signals, torchrun

def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *TINY, "--steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for(proc, out / "metrics.jsonl", 300)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    state = checkpoint.load(out, "FlowModels")
    assert 0 < state["step"] < 100000 and not training.non_finite_entries(state["flow"])
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout + stderr
    assert "--resume auto" in stdout + stderr


def test_torchrun_two_processes_keep_identical_replicas_including_actnorms_data_init(tmp_path):
    """2 CPU processes for 4 steps: both ranks' parameter digests agree and are the saved weights' digests, so
    rank 0's data-dependent act-norm init reached rank 1 (DDP broadcasts it when it wraps the flow)."""
    out = tmp_path / "ddp"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py", *TINY, "--steps", "4", "--out", str(out)],
                            cwd=HERE, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "terminate called" not in result.stderr
    state = checkpoint.load(out, "FlowModels")
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank its own noise
    assert len(state["replicas"]) == 2 and state["replicas"][0] == state["replicas"][1]
    fresh = Flow(Config(**state["model_config"]))
    fresh.load_state_dict(state["flow"])
    assert state["replicas"][0]["flow"] == training.parameters_digest(fresh)
    assert [r["step"] for r in strict_json_lines(out / "metrics.jsonl")] == [1, 2, 3, 4]  # rank 0 alone logs


# ---------------------------------------------------------------- non-finite losses

def nan_on_calls(monkeypatch, calls: set[int] | None) -> None:
    """train.bits_per_dim returns nan on the given calls (1-based; None = every call)."""
    real, count = train.bits_per_dim, [0]

    def loss(*args):
        count[0] += 1
        value = real(*args)
        return value * float("nan") if calls is None or count[0] in calls else value
    monkeypatch.setattr(train, "bits_per_dim", loss)


def test_a_nan_loss_skips_that_update_and_keeps_metrics_strict_json(tmp_path, monkeypatch, capsys):
    two = checkpoint.load(train.main(tiny_config(tmp_path / "two", steps=2)), "FlowModels")
    nan_on_calls(monkeypatch, {3})
    run = train.main(tiny_config(tmp_path / "nan", steps=3))
    three = checkpoint.load(run, "FlowModels")
    for k, v in three["flow"].items():  # step 3's update was skipped
        assert torch.equal(v, two["flow"][k]), k
    lines = strict_json_lines(run / "metrics.jsonl")
    assert lines[2]["step"] == 3 and lines[2]["bits_per_dim"] is None and lines[1]["bits_per_dim"] > 0
    assert "step 3: non-finite loss; update skipped" in capsys.readouterr().out


def test_nan_losses_every_step_stop_the_run_with_exit_3_and_no_bad_checkpoint(tmp_path, monkeypatch, capsys):
    nan_on_calls(monkeypatch, None)
    cfg = tiny_config(tmp_path / "run", steps=50, ckpt_every=1)
    exits_with(training.EXIT_DIVERGED, training.run_main, train.main, cfg)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(errors) == 1 and "training diverged: 5 non-finite losses in a row" in errors[0]
    saved = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert saved and all(not training.non_finite_entries(checkpoint.load(p, "FlowModels")) for p in saved)


# ---------------------------------------------------------------- resume with other flags

def test_resume_with_a_new_lr_uses_it_and_records_it(tmp_path, capsys):
    train.main(tiny_config(tmp_path / "run", steps=2, warmup=0))
    run = train.main(tiny_config(tmp_path / "run", steps=3, lr=5e-4, warmup=0, resume="auto"))
    state = checkpoint.load(run, "FlowModels")
    assert state["step"] == 3 and all(g["lr"] == 5e-4 for g in state["opt"]["param_groups"])
    assert json.loads((run / "config.json").read_text())["lr"] == 5e-4
    assert "--lr 0.003 -> 0.0005" in capsys.readouterr().out


@pytest.mark.parametrize("change", [{"batch_size": 4}, {"width": 16}, {"flow": "realnvp"}])
def test_resume_with_a_setting_that_cannot_change_exits_2_with_one_line(tmp_path, capsys, change):
    train.main(tiny_config(tmp_path / "run", steps=1))
    capsys.readouterr()
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "run", steps=2, resume="auto", **change))
    flag = "--" + next(iter(change)).replace("_", "-")
    assert "cannot resume" in (line := one_error_line(capsys)) and flag in line


# ---------------------------------------------------------------- small and missing data, bad flags

def test_a_folder_of_five_rgb_images_trains_to_the_end_and_samples(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8).numpy()).save(images / f"{i}.png")
    run = train.main(tiny_config(tmp_path / "run", steps=3, batch_size=4, init_batch=5,
                                 dataset=f"folder:{images}"))
    state = checkpoint.load(run, "FlowModels")
    assert state["step"] == 3 and state["model_config"]["channels"] == 3
    flow, _ = sample_script.load_model(run, torch.device("cpu"))
    assert sample_script.sample(flow, 4).shape == (4, 3, 16, 16)


@pytest.mark.parametrize("root", ["/nonexistent/data", "empty"])
def test_missing_mnist_files_exit_2_with_one_line_naming_the_path_and_flag(tmp_path, capsys, root):
    root = str(tmp_path) if root == "empty" else root
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "x", steps=1, data_root=root))
    line = one_error_line(capsys)
    assert root in line and "--data-root" in line


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "20"], "divisible"),
    (["--flow", "maf"], "--flow"),
    (["--coupling", "spline"], "--coupling"),
    (["--scale-fn", "exp"], "--scale-fn"),
    (["--learned-prior", "maybe"], "--learned-prior"),
    (["--depth", "-1"], "--depth"),
    (["--grad-clip", "nan"], "--grad-clip"),
    (["--temperature", "-1"], "--temperature"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--dep", "2"], "--dep"),  # no abbreviated flags
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
    assert "VAE checkpoint, not FlowModels" in one_error_line(capsys)
    no_weights = tmp_path / "no_weights.pt"
    checkpoint.save(no_weights, {"model": "FlowModels", "step": 1, "model_config": {"image_size": 16}})
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(no_weights), *out])
    assert "no weights for 'flow'" in one_error_line(capsys)
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(junk), "--temperature", "-1", *out])
    assert "--temperature" in one_error_line(capsys)


def test_sample_pretrained_loads_an_exported_run(tmp_path, monkeypatch, capsys):
    from shared import pretrained

    run = train.main(tiny_config(tmp_path / "run", steps=1))
    exported = pretrained.export(str(run), "FlowModels", ["flow"], str(tmp_path / "pretrained" / "flow.pt"))
    monkeypatch.setattr(sample_script, "PRETRAINED", exported)
    out = tmp_path / "samples"
    sample_script.cli_main(["--pretrained", "--num", "3", "--interpolations", "0", "--out", str(out)])
    assert len(list(out.glob("0*.png"))) == 3 and "step 1, --dataset mnist" in capsys.readouterr().out
    flow, _ = sample_script.load_pretrained(torch.device("cpu"))
    saved = checkpoint.load(run, "FlowModels")["flow"]
    for k, v in flow.state_dict().items():  # the fp16 copy of the run's flow
        assert torch.allclose(v.float(), saved[k].float(), rtol=1e-3, atol=1e-4), k


def test_sample_pretrained_without_the_file_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "pretrained" / "flow.pt"
    monkeypatch.setattr(sample_script, "PRETRAINED", missing)
    exits_with(2, sample_script.cli_main, ["--pretrained", "--out", str(tmp_path / "o")])
    line = one_error_line(capsys)
    assert str(missing) in line and "train" in line and "fetch" in line


def test_shipped_pretrained_flow_loads_safely_samples_and_inverts(tmp_path):
    """Fails until pretrained/flow.pt is shipped (made by the default 10-minute MNIST run)."""
    path = HERE / "pretrained" / "flow.pt"
    assert path.is_file(), f"{path} not shipped yet"
    assert path.stat().st_size < 2_000_000
    state = torch.load(path, weights_only=True)
    assert state["model"] == "FlowModels" and all(v.dtype == torch.float16 for v in state["flow"].values()
                                                  if v.is_floating_point())
    flow, _ = sample_script.load_pretrained(torch.device("cpu"))
    x = sample_script.sample(flow, 4, 0.7, generator=torch.Generator().manual_seed(0))
    cfg = flow.cfg
    assert x.shape == (4, cfg.channels, cfg.image_size, cfg.image_size) and torch.isfinite(x).all()
    assert x.std() > 0.1  # a trained flow, not a constant image
    held = sample_script.held_out(flow, 8)
    assert (sample_script.reconstruct(flow, held) - held).abs().max() < 1e-3
