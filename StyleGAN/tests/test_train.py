"""The training script end to end: run folder, sample.py, exact resume (EMA and the lazy regularisers' state),
signals, torchrun, non-finite losses, resume with changed flags, CLI errors, the pretrained generator."""
# Adapted from DCGAN/tests/test_train.py: the same plumbing tests, with G_ema, lazy R1 / path length and pl_mean.
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
from model import Config, Discriminator, Generator
from shared import checkpoint, cli, training

HERE = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "16", "--batch-size", "8", "--z-dim", "8", "--w-dim", "8", "--g-width", "8",
        "--d-width", "8", "--threads", "1", "--precision", "fp32", "--log-every", "1", "--sample-every", "2",
        "--minutes", "0"]


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(image_size=16, batch_size=8, z_dim=8, w_dim=8, g_width=8, d_width=8, threads=1, precision="fp32",
                log_every=1, sample_every=2, steps=steps, minutes=0, out=str(out), ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def strict_json_lines(path: Path) -> list[dict]:
    """metrics.jsonl parsed as strict JSON: a bare NaN / Infinity raises."""
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


# ---------------------------------------------------------------- a run, on real data

def test_two_steps_on_embedded_mnist_write_a_complete_run_folder_that_sample_py_loads(tmp_path, capsys):
    run = train.main(tiny_config(tmp_path / "run", steps=2))
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 2 and config["dataset"] == "mnist" and config["data_size"] == 5000
    lines = strict_json_lines(run / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2]
    assert all(0 < r["loss_d"] < 10 and 0 < r["loss_g"] < 10 and 0 < r["d_fake"] < 1 for r in lines)
    assert "r1" in lines[0] and "pl" not in lines[0]  # R1 at step 0 (every 16), path length off by default
    assert (run / "samples" / "step_0000002.png").is_file() and (run / "progress.gif").is_file()
    state = checkpoint.load(run, model="StyleGAN")
    assert state["step"] == 2 and state["model_config"]["channels"] == 1 and "G_ema" in state
    assert "done: 2 steps" in capsys.readouterr().out

    out = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=5, out=str(out), interpolations=2,
                                                  truncation=0.5, mix_rows=2, mix_cols=3))
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(5)]
    assert all((out / name).is_file() for name in ("grid.png", "interpolation.png", "style_mixing.png"))


LAZY = {"r1_every": 2, "pl_weight": 2.0, "pl_every": 2, "mixing": 0.9}


def test_resume_is_exact_with_the_ema_and_the_lazy_regularisers(tmp_path):
    """6 straight steps logged and sampled every step == 3 steps, stop, resume, 3 more, logged every 3rd step:
    R1 and path length fall on steps 0, 2, 4, so the resumed run must replay their cadence, pl_mean, the EMA and
    the mixing draws exactly; if logging or sampling consumed RNG, the weights would differ."""
    straight = train.main(tiny_config(tmp_path / "a", steps=6, log_every=1, sample_every=1, **LAZY))
    sparse = dict(log_every=3, sample_every=3, **LAZY)
    train.main(tiny_config(tmp_path / "b", steps=3, **sparse))
    resumed = train.main(tiny_config(tmp_path / "b", steps=6, resume="auto", **sparse))
    a, b = checkpoint.load(straight, "StyleGAN"), checkpoint.load(resumed, "StyleGAN")
    assert a["step"] == b["step"] == 6
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    assert not torch.equal(a["G"]["const"], a["G_ema"]["const"])  # the EMA is its own average
    for opt in ("opt_g", "opt_d"):
        assert torch.equal(a[opt]["state"][0]["exp_avg"], b[opt]["state"][0]["exp_avg"])
    assert a["pl_mean"].item() > 0 and torch.equal(a["pl_mean"], b["pl_mean"])
    assert a["data"] == b["data"]
    assert [r["step"] for r in strict_json_lines(resumed / "metrics.jsonl")] == [3, 6]


def test_lazy_r1_and_path_length_run_on_their_cadence_and_change_the_weights(tmp_path):
    plain = checkpoint.load(train.main(tiny_config(tmp_path / "plain", steps=4, r1_gamma=0.0)), "StyleGAN")
    run = train.main(tiny_config(tmp_path / "lazy", steps=4, r1_gamma=10.0, **{**LAZY, "r1_every": 3}))
    lazy = checkpoint.load(run, "StyleGAN")
    assert not torch.equal(plain["D"]["out.weight"], lazy["D"]["out.weight"])
    lines = strict_json_lines(run / "metrics.jsonl")
    r1, pl = [r["r1"] for r in lines], [r["pl"] for r in lines]
    # R1 every 3rd step (steps 0 and 3), PL every 2nd (0 and 2): later steps log the last value computed
    assert r1[0] == r1[1] == r1[2] != r1[3] and pl[0] == pl[1] != pl[2] == pl[3]
    assert all(v > 0 for v in r1 + pl)
    assert plain["pl_mean"].item() == 0 and lazy["pl_mean"].item() > 0


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
    state = checkpoint.load(out, "StyleGAN")
    assert 0 < state["step"] < 100000 and not training.non_finite_entries(state["G"])
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout + stderr


def test_torchrun_two_processes_with_both_lazy_regularisers_keep_identical_replicas(tmp_path):
    """2 CPU processes, R1 and path length every 2nd step (double backwards under DDP), to the end of --steps:
    both ranks' parameter digests (G, D and the EMA) agree and are those of the saved weights."""
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "train.py", *TINY, "--r1-every", "2", "--pl-weight", "2", "--pl-every", "2",
                           "--steps", "4", "--out", str(out)],
                          cwd=HERE, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr
    state = checkpoint.load(out, "StyleGAN")
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank its own noise
    assert [r["step"] for r in strict_json_lines(out / "metrics.jsonl")] == [1, 2, 3, 4]  # rank 0 logs alone
    assert len(state["replicas"]) == 2 and state["replicas"][0] == state["replicas"][1]
    for net, cls in (("G", Generator), ("D", Discriminator), ("G_ema", Generator)):
        fresh = cls(Config(**state["model_config"]))
        fresh.load_state_dict(state[net])
        assert state["replicas"][0][net] == training.parameters_digest(fresh), net


# ---------------------------------------------------------------- non-finite losses

def nan_on_calls(monkeypatch, calls: set[int] | None) -> None:
    """train.discriminator_loss returns nan on the given calls (1-based; None = every call)."""
    real_loss, count = train.discriminator_loss, [0]

    def loss(*args):
        count[0] += 1
        value = real_loss(*args)
        return value * float("nan") if calls is None or count[0] in calls else value
    monkeypatch.setattr(train, "discriminator_loss", loss)


def test_a_nan_loss_skips_that_update_and_keeps_metrics_strict_json(tmp_path, monkeypatch, capsys):
    two = checkpoint.load(train.main(tiny_config(tmp_path / "two", steps=2)), "StyleGAN")
    nan_on_calls(monkeypatch, {3})
    run = train.main(tiny_config(tmp_path / "nan", steps=3))
    three = checkpoint.load(run, "StyleGAN")
    for k, v in three["D"].items():  # D's update of step 3 was skipped (no R1 step there either)
        assert torch.equal(v, two["D"][k]), k
    assert not torch.equal(three["G"]["const"], two["G"]["const"])  # G's was not
    lines = strict_json_lines(run / "metrics.jsonl")
    assert lines[2]["step"] == 3 and lines[2]["loss_d"] is None and lines[1]["loss_d"] > 0
    assert "step 3: non-finite loss_d; update skipped" in capsys.readouterr().out


def test_nan_losses_every_step_stop_the_run_with_exit_3_and_no_bad_checkpoint(tmp_path, monkeypatch, capsys):
    nan_on_calls(monkeypatch, None)
    cfg = tiny_config(tmp_path / "run", steps=50, ckpt_every=1)
    exits_with(training.EXIT_DIVERGED, training.run_main, train.main, cfg)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(errors) == 1 and "training diverged: 5 non-finite losses in a row" in errors[0]
    saved = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert saved and all(not training.non_finite_entries(checkpoint.load(p, "StyleGAN")) for p in saved)


# ---------------------------------------------------------------- resume with other flags, CLI errors

def test_resume_with_a_new_lr_keeps_the_lazy_scaling_and_a_new_width_exits_2(tmp_path, capsys):
    train.main(tiny_config(tmp_path / "run", steps=2))
    run = train.main(tiny_config(tmp_path / "run", steps=3, lr=1e-3, resume="auto"))
    state = checkpoint.load(run, "StyleGAN")
    assert state["opt_d"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 16 / 17)  # R1 on: lazy-scaled
    assert state["opt_g"]["param_groups"][0]["lr"] == pytest.approx(1e-3)  # path length off
    capsys.readouterr()
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "run", steps=4, resume="auto", g_width=16))
    assert "cannot resume" in (line := one_error_line(capsys)) and "--g-width" in line


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "24"], "power of two"),
    (["--r1-gamma", "-1"], "--r1-gamma"),
    (["--pl-every", "0"], "--pl-every"),
    (["--mixing", "1.5"], "--mixing"),
    (["--mapping-layers", "0"], "--mapping-layers"),
    (["--ema-kimg", "0"], "--ema-kimg"),
])
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path, capsys):
    exits_with(2, cli.parse, train.TrainConfig, [*args, "--out", str(tmp_path / "x")], train.check)
    assert needle in one_error_line(capsys)


# ---------------------------------------------------------------- sample.py: bad input, pretrained weights

def test_sample_py_rejects_bad_checkpoints_and_flags_with_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    other = tmp_path / "other.pt"
    checkpoint.save(other, {"model": "DCGAN", "step": 1})
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(other), *out])
    assert "DCGAN checkpoint, not StyleGAN" in one_error_line(capsys)
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(other), "--truncation", "1.5", *out])
    assert "--truncation" in one_error_line(capsys)


def test_sample_pretrained_loads_an_exported_ema_generator(tmp_path, monkeypatch, capsys):
    from shared import pretrained

    run = train.main(tiny_config(tmp_path / "run", steps=1))
    exported = pretrained.export(str(run), "StyleGAN", ["G_ema:G"], str(tmp_path / "pretrained" / "generator.pt"))
    monkeypatch.setattr(sample_script, "PRETRAINED", exported)
    out = tmp_path / "samples"
    sample_script.cli_main(["--pretrained", "--num", "3", "--interpolations", "0", "--mix-rows", "0",
                            "--out", str(out)])
    assert len(list(out.glob("0*.png"))) == 3 and "step 1, --dataset mnist" in capsys.readouterr().out
    G, _ = sample_script.load_pretrained(torch.device("cpu"))
    saved = checkpoint.load(run, "StyleGAN")["G_ema"]
    for k, v in G.state_dict().items():  # the fp16 copy of the run's EMA generator
        assert torch.allclose(v.float(), saved[k].float(), rtol=1e-3, atol=1e-3), k


def test_sample_pretrained_without_the_file_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "pretrained" / "generator.pt"
    monkeypatch.setattr(sample_script, "PRETRAINED", missing)
    exits_with(2, sample_script.cli_main, ["--pretrained", "--out", str(tmp_path / "o")])
    line = one_error_line(capsys)
    assert str(missing) in line and "train" in line


def test_shipped_pretrained_generator_loads_safely_and_samples(tmp_path):
    """Fails until pretrained/generator.pt (the EMA generator of the default 10-minute MNIST run) is shipped."""
    path = HERE / "pretrained" / "generator.pt"
    assert path.is_file(), f"{path} not shipped yet"
    assert path.stat().st_size < 2_000_000
    state = torch.load(path, weights_only=True)
    assert state["model"] == "StyleGAN" and all(v.dtype == torch.float16 for v in state["G"].values()
                                                if v.is_floating_point())
    G, _ = sample_script.load_pretrained(torch.device("cpu"))
    x = sample_script.sample(G, 4, rng=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, G.cfg.image_size, G.cfg.image_size) and torch.isfinite(x).all()
    assert x.std() > 0.1  # a trained generator, not a constant image
