"""The training script end to end, for both stages: run folders, the latent scale, sample.py, exact resume,
--resume auto across stages, signals, torchrun, non-finite losses, unusable autoencoder checkpoints, CLI errors,
the pretrained networks."""
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
from model import Config
from networks import Autoencoder, UNet
from shared import checkpoint, cli, training
from shared.data import load_dataset, to_float
from shared.testing import children, environ, exits_with, strict_json_lines, wait_for

HERE = Path(__file__).resolve().parents[1]
SIZES = dict(image_size=16, batch_size=8, diffusion_batch_size=8, ae_width=8, width=16, mults="1,2", attn="2",
             timesteps=20, sample_steps=2, scale_images=64)
TINY = [a for k, v in SIZES.items() for a in (f"--{k.replace('_', '-')}", str(v))] + [
    "--threads", "1", "--precision", "fp32", "--log-every", "1", "--sample-every", "2"]


def tiny_config(out: Path, steps: int, diffusion_steps: int = 2, **overrides) -> train.TrainConfig:
    base = dict(**SIZES, threads=1, precision="fp32", log_every=1, sample_every=2, steps=steps,
                diffusion_steps=diffusion_steps, out=str(out), ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


def assert_same_state(a: dict, b: dict, nets: tuple[str, ...], opt: str) -> None:
    for net in nets:
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    assert torch.equal(a[opt]["state"][0]["exp_avg"], b[opt]["state"][0]["exp_avg"])
    assert a["data"] == b["data"]


# ---------------------------------------------------------------- a run, on real data

def test_both_stages_on_embedded_mnist_write_run_folders_with_a_unit_variance_latent_scale(tmp_path, capsys):
    out = train.main(tiny_config(tmp_path / "run", steps=2, diffusion_steps=2))  # default data: embedded MNIST
    for stage in ("autoencoder", "diffusion"):
        run = out / stage
        config = json.loads((run / "config.json").read_text())
        assert config["stage"] == stage and config["dataset"] == "mnist" and config["data_size"] == 5000
        assert [r["step"] for r in strict_json_lines(run / "metrics.jsonl")] == [1, 2]
        assert (run / "samples" / "step_0000002.png").is_file() and (run / "progress.gif").is_file()
        state = checkpoint.load(run, model="LatentDiffusion")
        assert state["step"] == 2 and state["stage"] == stage and state["model_config"]["factor"] == 4
    ae_lines = strict_json_lines(out / "autoencoder" / "metrics.jsonl")
    assert all(0 < r["rec_per_pixel"] < 2 and r["kl"] > 0 for r in ae_lines)
    diff = checkpoint.load(out / "diffusion", "LatentDiffusion")
    ae_state = checkpoint.load(out / "autoencoder", "LatentDiffusion")
    for k, v in ae_state["autoencoder"].items():  # stage 2's checkpoint holds the frozen autoencoder
        assert torch.equal(diff["autoencoder"][k], v), k
    assert diff["autoencoder_step"] == 2
    # the saved scale makes the latents of the training images unit-variance (the paper's 1 / std)
    ae = Autoencoder(Config(**diff["model_config"]))
    ae.load_state_dict(diff["autoencoder"])
    x = to_float(load_dataset("mnist", None, 16, "train").images[::10])
    with torch.no_grad():
        mean, logvar = ae.encoder(x)
    z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
    s = diff["unet"]["scale_factor"]
    assert torch.equal(s, diff["ema"]["scale_factor"]) and abs(z.std().item() - 1) > 0.01
    assert (s * z).std().item() == pytest.approx(1.0, abs=0.05)
    summary = capsys.readouterr().out
    assert summary.count("done: 2 steps") == 2 and f"python sample.py --checkpoint {out / 'diffusion'}" in summary

    samples = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(out), num=5, steps=3, out=str(samples),
                                                  trajectory=2, reconstructions=8))
    assert sorted(p.name for p in samples.glob("0*.png")) == [f"{i:06d}.png" for i in range(5)]
    assert all((samples / f).is_file() for f in ("grid.png", "trajectory.png", "reconstructions.png"))


def test_stage_configs_split_the_steps_and_the_minutes(tmp_path):
    cfg = tiny_config(tmp_path / "run", steps=4, diffusion_steps=0, minutes=10.0)  # 0 = 4 x --steps
    ae, diff = train.stage_config(cfg, "autoencoder"), train.stage_config(cfg, "diffusion")
    assert (ae.steps, diff.steps) == (4, 16) and (ae.minutes, diff.minutes) == pytest.approx((3.0, 7.0))
    assert ae.out == str(tmp_path / "run" / "autoencoder") and diff.autoencoder == str(tmp_path / "run" / "autoencoder")
    assert train.stage_config(train.dataclasses.replace(cfg, stage="diffusion"), "diffusion").minutes == 10.0


def test_class_conditional_run_samples_the_requested_class_with_guidance(tmp_path):
    out = train.main(tiny_config(tmp_path / "run", steps=1, diffusion_steps=2, class_cond=True))
    state = checkpoint.load(out / "diffusion", "LatentDiffusion")
    assert state["model_config"]["num_classes"] == 10 and state["unet"]["class_emb.weight"].shape[0] == 11
    samples = tmp_path / "s"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(out), num=3, steps=2, label=7, guidance=2.0,
                                                  out=str(samples), trajectory=0, reconstructions=0))
    assert len(list(samples.glob("0*.png"))) == 3


# ---------------------------------------------------------------- exact resume

def test_autoencoder_resume_is_exact_and_logging_never_changes_training(tmp_path):
    straight = train.main(tiny_config(tmp_path / "a", steps=6, stage="autoencoder", log_every=1, sample_every=1))
    sparse = dict(stage="autoencoder", log_every=3, sample_every=3)
    train.main(tiny_config(tmp_path / "b", steps=3, **sparse))
    resumed = train.main(tiny_config(tmp_path / "b", steps=6, resume="auto", **sparse))
    a = checkpoint.load(straight / "autoencoder", "LatentDiffusion")
    b = checkpoint.load(resumed / "autoencoder", "LatentDiffusion")
    assert a["step"] == b["step"] == 6
    assert_same_state(a, b, ("autoencoder",), "opt_autoencoder")
    assert [r["step"] for r in strict_json_lines(resumed / "autoencoder" / "metrics.jsonl")] == [3, 6]


def test_diffusion_resume_is_exact_with_label_dropout_and_logging(tmp_path):
    ae_run = train.main(tiny_config(tmp_path / "ae", steps=2, stage="autoencoder"))
    common = dict(stage="diffusion", autoencoder=str(ae_run), class_cond=True, p_uncond=0.5)
    straight = train.main(tiny_config(tmp_path / "a", steps=2, diffusion_steps=6, log_every=1, sample_every=1,
                                      **common))
    sparse = dict(log_every=3, sample_every=3, **common)
    train.main(tiny_config(tmp_path / "b", steps=2, diffusion_steps=3, **sparse))
    resumed = train.main(tiny_config(tmp_path / "b", steps=2, diffusion_steps=6, resume="auto", **sparse))
    a = checkpoint.load(straight / "diffusion", "LatentDiffusion")
    b = checkpoint.load(resumed / "diffusion", "LatentDiffusion")
    assert a["step"] == b["step"] == 6
    assert_same_state(a, b, ("unet", "ema"), "opt_unet")


def test_resume_auto_continues_the_unfinished_stage_and_refuses_a_diffusion_of_an_older_autoencoder(tmp_path, capsys):
    out = train.main(tiny_config(tmp_path / "run", steps=2, diffusion_steps=2))
    ae_file = out / "autoencoder" / "checkpoints" / "latest.pt"
    before = ae_file.read_bytes()
    train.main(tiny_config(tmp_path / "run", steps=2, diffusion_steps=4, resume="auto"))  # stage 1 is finished
    assert ae_file.read_bytes() == before
    assert checkpoint.load(out / "diffusion", "LatentDiffusion")["step"] == 4
    capsys.readouterr()
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "run", steps=3, diffusion_steps=5,
                                                              resume="auto"))
    assert checkpoint.load(out / "autoencoder", "LatentDiffusion")["step"] == 3
    line = one_error_line(capsys)
    assert "autoencoder at step 2" in line and "now at step 3" in line


# ---------------------------------------------------------------- unusable autoencoders

def test_stage_2_refuses_an_autoencoder_it_cannot_use_with_one_line_and_exit_2(tmp_path, capsys):
    ae = train.main(tiny_config(tmp_path / "ae", steps=1, stage="autoencoder"))
    other = tmp_path / "other.pt"
    checkpoint.save(other, {"model": "DCGAN", "step": 1})
    diff_run = train.main(tiny_config(tmp_path / "d", steps=1, diffusion_steps=1, stage="diffusion",
                                      autoencoder=str(ae)))
    cases = [({"autoencoder": str(tmp_path / "missing")}, "not found"),
             ({"autoencoder": str(other)}, "DCGAN checkpoint, not LatentDiffusion"),
             ({"autoencoder": str(diff_run / "diffusion")}, "not a stage-1 autoencoder checkpoint"),
             ({"autoencoder": str(ae), "dataset": "shapes"}, "trained on mnist at 16x16, not --dataset shapes"),
             ({"autoencoder": str(ae), "factor": 2}, "another configuration: --factor 4 (this run: 2)"),
             ({"autoencoder": str(ae), "latent_channels": 3}, "--latent-channels 4 (this run: 3)")]
    capsys.readouterr()
    for change, needle in cases:
        exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "x", 1, stage="diffusion", **change))
        assert needle in one_error_line(capsys), change
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").rglob("*.pt"))


# ---------------------------------------------------------------- signals, torchrun

def test_sigterm_in_the_diffusion_stage_saves_a_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *TINY, "--steps", "2", "--diffusion-steps", "100000",
                             "--out", str(out)], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for(proc, out / "diffusion" / "metrics.jsonl", 300)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    state = checkpoint.load(out / "diffusion", "LatentDiffusion")
    assert 0 < state["step"] < 100000 and not training.non_finite_entries(state["ema"])
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout + stderr and "--resume auto" in stdout + stderr
    assert checkpoint.load(out / "autoencoder", "LatentDiffusion")["step"] == 2


def assert_replicas_identical(state: dict, nets: dict) -> None:
    assert len(state["replicas"]) == 2 and state["replicas"][0] == state["replicas"][1]
    for net, cls in nets.items():
        fresh = cls(Config(**state["model_config"]))
        fresh.load_state_dict(state[net])
        assert state["replicas"][0][net] == training.parameters_digest(fresh), net


def test_torchrun_two_processes_train_both_stages_and_stop_together_when_one_rank_is_signalled(tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py", *TINY, "--steps", "3", "--diffusion-steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for(proc, out / "diffusion" / "metrics.jsonl", 300, seconds=240)
        rank1 = [pid for pid in children(proc.pid) if environ(pid).get("RANK") == "1"]
        assert len(rank1) == 1, children(proc.pid)
        os.kill(rank1[0], signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=90)  # a rank stopping alone would hang the other here
    finally:
        if proc.poll() is None:
            for pid in children(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
    assert "terminate called" not in stderr
    ae = checkpoint.load(out / "autoencoder", "LatentDiffusion")
    assert ae["step"] == 3 and ae["world_size"] == 2
    assert_replicas_identical(ae, {"autoencoder": Autoencoder})
    diff = checkpoint.load(out / "diffusion", "LatentDiffusion")
    assert 0 < diff["step"] < 100000 and diff["world_size"] == 2
    assert f"stopped at step {diff['step']} (signal SIGTERM)" in stdout + stderr
    assert not torch.equal(diff["rng"][0]["torch"], diff["rng"][1]["torch"])  # own z, t, noise per rank
    assert_replicas_identical(diff, {"unet": UNet, "ema": UNet, "autoencoder": Autoencoder})


# ---------------------------------------------------------------- non-finite losses, flags

def test_a_nan_diffusion_loss_skips_that_update_and_keeps_metrics_strict_json(tmp_path, monkeypatch, capsys):
    ae = str(train.main(tiny_config(tmp_path / "ae", 2, stage="autoencoder")))
    two = checkpoint.load(train.main(tiny_config(tmp_path / "two", 2, 2, stage="diffusion", autoencoder=ae))
                          / "diffusion", "LatentDiffusion")
    real_loss, count = train.l_simple, [0]

    def loss(*args):
        count[0] += 1
        value = real_loss(*args)
        return value * float("nan") if count[0] == 3 else value
    monkeypatch.setattr(train, "l_simple", loss)
    run = train.main(tiny_config(tmp_path / "nan", 2, 3, stage="diffusion", autoencoder=ae)) / "diffusion"
    three = checkpoint.load(run, "LatentDiffusion")
    for net in ("unet", "ema"):
        for k, v in three[net].items():
            assert torch.equal(v, two[net][k]), (net, k)
    lines = strict_json_lines(run / "metrics.jsonl")
    assert lines[2]["step"] == 3 and lines[2]["loss"] is None and lines[1]["loss"] > 0
    assert "step 3: non-finite loss; update skipped" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["--factor", "3"], "power of 2"),
    (["--image-size", "16", "--factor", "8", "--mults", "1,2,2"], "--mults"),
    (["--stage", "third"], "--stage"),
    (["--reconstruction", "lpips"], "--reconstruction"),
    (["--diffusion-share", "1.5"], "--diffusion-share"),
    (["--p-uncond", "1"], "--p-uncond"),
    (["--kl-weight", "-1"], "--kl-weight"),
    (["--stage", "both", "--resume", "x.pt"], "--resume auto"),
    (["--diffusion-sha", "0.5"], "--diffusion-sha"),  # no abbreviated flags
])
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path, capsys):
    exits_with(2, cli.parse, train.TrainConfig, [*args, "--out", str(tmp_path / "x")], train.check)
    assert needle in one_error_line(capsys)


# ---------------------------------------------------------------- sample.py: pretrained weights

def test_sample_pretrained_loads_an_exported_run(tmp_path, monkeypatch, capsys):
    from shared import pretrained

    out = train.main(tiny_config(tmp_path / "run", steps=1, diffusion_steps=1))
    exported = pretrained.export(str(out / "diffusion"), "LatentDiffusion", ["autoencoder", "ema:unet"],
                                 str(tmp_path / "pretrained" / "ldm.pt"))
    monkeypatch.setattr(sample_script, "PRETRAINED", exported)
    samples = tmp_path / "samples"
    sample_script.cli_main(["--pretrained", "--num", "3", "--steps", "2", "--trajectory", "0",
                            "--reconstructions", "8", "--out", str(samples)])
    assert len(list(samples.glob("0*.png"))) == 3 and (samples / "reconstructions.png").is_file()
    assert "step 1, --dataset mnist" in capsys.readouterr().out
    ae, net, _ = sample_script.load_pretrained(torch.device("cpu"))
    saved = checkpoint.load(out / "diffusion", "LatentDiffusion")
    for key, module in (("autoencoder", ae), ("ema", net)):  # the fp16 copies, the scale factor included
        for k, v in module.state_dict().items():
            assert torch.allclose(v.float(), saved[key][k].float(), rtol=1e-3, atol=1e-4), (key, k)


def test_sample_pretrained_without_the_file_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "pretrained" / "ldm.pt"
    monkeypatch.setattr(sample_script, "PRETRAINED", missing)
    exits_with(2, sample_script.cli_main, ["--pretrained", "--out", str(tmp_path / "o")])
    line = one_error_line(capsys)
    assert str(missing) in line and "train" in line and "fetch" in line


def test_shipped_pretrained_networks_load_safely_and_sample():
    """Fails until pretrained/ldm.pt (made by the default 10-minute MNIST run) is shipped."""
    path = HERE / "pretrained" / "ldm.pt"
    assert path.is_file(), f"{path} not shipped yet"
    assert path.stat().st_size < 8_000_000
    state = torch.load(path, weights_only=True)
    assert state["model"] == "LatentDiffusion" and all(v.dtype == torch.float16 for net in ("autoencoder", "unet")
                                                       for v in state[net].values() if v.is_floating_point())
    ae, net, _ = sample_script.load_pretrained(torch.device("cpu"))
    x = sample_script.sample(ae, net, 4, 5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 32, 32) and torch.isfinite(x).all() and x.std() > 0.1
    assert 0.1 < net.scale_factor.item() < 10
