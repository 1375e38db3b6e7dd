"""The training script end to end, for both stages: run folders, sample.py, exact resume, --resume auto across
stages, signals, torchrun, non-finite losses, resume with changed flags, unusable VQ-VAE checkpoints, tiny
datasets, CLI errors, the pretrained networks."""
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
from model import VQVAE, Config, Prior
from shared import checkpoint, cli, training
from shared.testing import children, environ, exits_with, strict_json_lines, wait_for

HERE = Path(__file__).resolve().parents[1]
SIZES = dict(image_size=16, batch_size=8, hidden=8, res_hidden=8, codes=16, code_dim=4, prior_width=16,
             prior_layers=1, prior_heads=2)
TINY = [a for k, v in SIZES.items() for a in (f"--{k.replace('_', '-')}", str(v))] + [
    "--threads", "1", "--precision", "fp32", "--log-every", "1", "--sample-every", "2"]


def tiny_config(out: Path, steps: int, prior_steps: int = 2, **overrides) -> train.TrainConfig:
    base = dict(**SIZES, threads=1, precision="fp32", log_every=1, sample_every=2, steps=steps,
                prior_steps=prior_steps, out=str(out), ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


def assert_same_state(a: dict, b: dict, nets: tuple[str, ...], opt: str) -> None:
    for net in nets:  # parameters and buffers (the EMA counts and sums)
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    assert torch.equal(a[opt]["state"][0]["exp_avg"], b[opt]["state"][0]["exp_avg"])
    assert a["data"] == b["data"]


# ---------------------------------------------------------------- a run, on real data

def test_both_stages_on_embedded_mnist_write_complete_run_folders_that_sample_py_loads(tmp_path, capsys):
    out = train.main(tiny_config(tmp_path / "run", steps=2, prior_steps=2))  # default dataset: embedded MNIST
    for stage in ("vqvae", "prior"):
        run = out / stage
        config = json.loads((run / "config.json").read_text())
        assert config["stage"] == stage and config["dataset"] == "mnist" and config["data_size"] == 5000
        assert "embedded" in config["data_source"]
        assert [r["step"] for r in strict_json_lines(run / "metrics.jsonl")] == [1, 2]
        assert (run / "samples" / "step_0000002.png").is_file() and (run / "progress.gif").is_file()
        assert list(run.glob("events.out.tfevents.*"))
        state = checkpoint.load(run, model="VQ-VAE")
        assert state["step"] == 2 and state["stage"] == stage and state["model_config"]["channels"] == 1
    vq_lines = strict_json_lines(out / "vqvae" / "metrics.jsonl")
    assert all(0 < r["recon"] < 10 and 1 <= r["perplexity"] <= 16 and 0 < r["usage"] <= 1 for r in vq_lines)
    prior_lines = strict_json_lines(out / "prior" / "metrics.jsonl")
    assert 2 < prior_lines[-1]["val_bits_per_code"] < 6 and 2 < prior_lines[0]["bits_per_code"] < 6  # ~log2 16
    assert (out / "prior" / "reconstructions" / "step_0000000.png").is_file()
    prior_state = checkpoint.load(out / "prior", "VQ-VAE")
    vq_state = checkpoint.load(out / "vqvae", "VQ-VAE")
    for k, v in vq_state["vqvae"].items():  # the prior's run holds the frozen VQ-VAE it was trained on
        assert torch.equal(prior_state["vqvae"][k], v), k
    assert prior_state["vqvae_step"] == 2
    summary = capsys.readouterr().out
    assert summary.count("done: 2 steps") == 2 and f"python sample.py --checkpoint {out / 'prior'}" in summary

    samples = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(out), num=5, out=str(samples), reconstructions=8))
    assert sorted(p.name for p in samples.glob("0*.png")) == [f"{i:06d}.png" for i in range(5)]
    assert (samples / "grid.png").is_file() and (samples / "reconstructions.png").is_file()


def test_stage_1_alone_samples_nothing_but_reconstructs(tmp_path, capsys):
    out = train.main(tiny_config(tmp_path / "run", steps=1, stage="vqvae"))
    assert not (out / "prior").exists()
    samples = tmp_path / "s"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(out), out=str(samples), reconstructions=8))
    assert (samples / "reconstructions.png").is_file() and not list(samples.glob("0*.png"))
    assert "has no prior yet" in capsys.readouterr().out


def test_stage_configs_split_the_steps_and_the_minutes(tmp_path):
    cfg = tiny_config(tmp_path / "run", steps=4, prior_steps=0, minutes=10.0)  # 0 = 1.5 x --steps
    vq, prior = train.stage_config(cfg, "vqvae"), train.stage_config(cfg, "prior")
    assert (vq.steps, prior.steps) == (4, 6) and (vq.minutes, prior.minutes) == pytest.approx((4.0, 6.0))
    assert vq.out == str(tmp_path / "run" / "vqvae") and prior.vqvae == str(tmp_path / "run" / "vqvae")
    assert train.stage_config(train.dataclasses.replace(cfg, prior_steps=9, stage="prior"), "prior").minutes == 10.0
    assert train.stage_config(train.dataclasses.replace(cfg, prior_steps=9), "prior").steps == 9


# ---------------------------------------------------------------- exact resume

def test_vqvae_resume_is_exact_and_logging_never_changes_training(tmp_path):
    """6 straight steps logged and sampled every step == 3 steps, stop, resume, 3 more, logged every 3rd step
    (EMA codebook, dead-code restarts drawing from the RNG)."""
    straight = train.main(tiny_config(tmp_path / "a", steps=6, stage="vqvae", log_every=1, sample_every=1))
    sparse = dict(stage="vqvae", log_every=3, sample_every=3)
    train.main(tiny_config(tmp_path / "b", steps=3, **sparse))
    resumed = train.main(tiny_config(tmp_path / "b", steps=6, resume="auto", **sparse))
    a, b = checkpoint.load(straight / "vqvae", "VQ-VAE"), checkpoint.load(resumed / "vqvae", "VQ-VAE")
    assert a["step"] == b["step"] == 6
    assert_same_state(a, b, ("vqvae",), "opt_vqvae")
    assert [r["step"] for r in strict_json_lines(resumed / "vqvae" / "metrics.jsonl")] == [3, 6]
    restarts = sum(r["restarted"] for r in strict_json_lines(straight / "vqvae" / "metrics.jsonl"))
    assert restarts > 0  # the restarts (and their RNG draws) were exercised


def test_prior_resume_is_exact_with_dropout_and_logging(tmp_path):
    vq_run = train.main(tiny_config(tmp_path / "vq", steps=2, stage="vqvae"))
    common = dict(stage="prior", vqvae=str(vq_run), prior_dropout=0.2)
    straight = train.main(tiny_config(tmp_path / "a", steps=2, prior_steps=6, log_every=1, sample_every=1, **common))
    sparse = dict(log_every=3, sample_every=3, **common)
    train.main(tiny_config(tmp_path / "b", steps=2, prior_steps=3, **sparse))
    resumed = train.main(tiny_config(tmp_path / "b", steps=2, prior_steps=6, resume="auto", **sparse))
    a, b = checkpoint.load(straight / "prior", "VQ-VAE"), checkpoint.load(resumed / "prior", "VQ-VAE")
    assert a["step"] == b["step"] == 6
    assert_same_state(a, b, ("prior", "vqvae"), "opt_prior")


def test_resume_auto_continues_the_unfinished_stage_and_refuses_a_prior_of_an_older_vqvae(tmp_path, capsys):
    out = train.main(tiny_config(tmp_path / "run", steps=2, prior_steps=2))
    vq_file = out / "vqvae" / "checkpoints" / "latest.pt"
    before = vq_file.read_bytes()
    train.main(tiny_config(tmp_path / "run", steps=2, prior_steps=4, resume="auto"))  # stage 1 is finished
    assert vq_file.read_bytes() == before
    assert checkpoint.load(out / "prior", "VQ-VAE")["step"] == 4
    capsys.readouterr()
    # more VQ-VAE steps: stage 1 continues, and the prior trained on the old codes is refused
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "run", steps=3, prior_steps=5,
                                                              resume="auto"))
    assert checkpoint.load(out / "vqvae", "VQ-VAE")["step"] == 3
    line = one_error_line(capsys)
    assert "prior for the VQ-VAE at step 2" in line and "now at step 3" in line


# ---------------------------------------------------------------- signals, torchrun

def test_sigterm_in_either_stage_saves_a_checkpoint_exits_143_and_resume_auto_goes_on(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train.py", *TINY, "--out", str(out)]
    proc = subprocess.Popen(cmd + ["--steps", "100000"], cwd=HERE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    wait_for(proc, out / "vqvae" / "metrics.jsonl", 400)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    state = checkpoint.load(out / "vqvae", "VQ-VAE")
    assert 0 < state["step"] < 100000 and not training.non_finite_entries(state["vqvae"])
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout + stderr and "--resume auto" in stdout + stderr
    assert not (out / "prior").exists()  # stage 2 never started
    # --resume auto with fewer --steps: stage 1 counts as finished, the prior starts; signal it too
    proc = subprocess.Popen(cmd + ["--steps", "1", "--prior-steps", "100000", "--resume", "auto"], cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(proc, out / "prior" / "metrics.jsonl", 200)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    prior = checkpoint.load(out / "prior", "VQ-VAE")
    assert 0 < prior["step"] < 100000 and prior["vqvae_step"] == state["step"]
    assert checkpoint.load(out / "vqvae", "VQ-VAE")["step"] == state["step"]  # stage 1 was not trained again


def assert_replicas_identical(state: dict, nets: dict) -> None:
    """Both ranks' parameter digests agree, and they are the digests of the saved weights."""
    assert len(state["replicas"]) == 2 and state["replicas"][0] == state["replicas"][1]
    for net, cls in nets.items():
        fresh = cls(Config(**state["model_config"]))
        fresh.load_state_dict(state[net])
        assert state["replicas"][0][net] == training.parameters_digest(fresh), net


def test_torchrun_two_processes_keep_one_codebook_and_stop_together_when_one_rank_is_signalled(tmp_path):
    """Stage 1 under 2 CPU processes (EMA statistics all-reduced, rank 0's dead-code restarts broadcast), then
    the prior; SIGTERM to rank 1 only: both ranks stop at the same step with identical replicas."""
    out = tmp_path / "ddp"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py", *TINY, "--steps", "6", "--prior-steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for(proc, out / "prior" / "metrics.jsonl", 200, seconds=240)
        rank1 = [pid for pid in children(proc.pid) if environ(pid).get("RANK") == "1"]
        assert len(rank1) == 1, children(proc.pid)
        os.kill(rank1[0], signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=90)  # a rank stopping alone would hang the other here
    finally:
        if proc.poll() is None:  # a failed test must not leave its ranks running
            for pid in children(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
    assert "terminate called" not in stderr
    vq = checkpoint.load(out / "vqvae", "VQ-VAE")
    assert vq["step"] == 6 and vq["world_size"] == 2
    assert sum(r["restarted"] for r in strict_json_lines(out / "vqvae" / "metrics.jsonl")) > 0
    assert_replicas_identical(vq, {"vqvae": VQVAE})  # incl. the EMA-updated codebook
    prior = checkpoint.load(out / "prior", "VQ-VAE")
    assert 0 < prior["step"] < 100000 and prior["world_size"] == 2
    assert f"stopped at step {prior['step']} (signal SIGTERM)" in stdout + stderr  # rank 0 heard rank 1's signal
    assert not torch.equal(prior["rng"][0]["torch"], prior["rng"][1]["torch"])  # own dropout masks per rank
    assert [r["step"] for r in strict_json_lines(out / "prior" / "metrics.jsonl")] == list(range(1, prior["step"] + 1))
    assert_replicas_identical(prior, {"prior": Prior, "vqvae": VQVAE})


# ---------------------------------------------------------------- non-finite losses

def nan_on_calls(monkeypatch, name: str, calls: set[int] | None) -> None:
    """train.<name> returns nan on the given training calls (1-based; None = every call)."""
    real_loss, count = getattr(train, name), [0]

    def loss(net, *args):
        if name == "prior_nll" and not net.training:  # held-out figures, not a training step
            return real_loss(net, *args)
        count[0] += 1
        value = real_loss(net, *args)
        return value * float("nan") if calls is None or count[0] in calls else value
    monkeypatch.setattr(train, name, loss)


@pytest.mark.parametrize("stage,name,net", [("vqvae", "reconstruction_loss", "vqvae"),
                                            ("prior", "prior_nll", "prior")])
def test_a_nan_loss_skips_that_update_and_keeps_metrics_strict_json(tmp_path, monkeypatch, capsys, stage, name, net):
    extra = {} if stage == "vqvae" else {"vqvae": str(train.main(tiny_config(tmp_path / "vq", 2, stage="vqvae")))}
    steps = lambda n: {"steps": n} if stage == "vqvae" else {"steps": 2, "prior_steps": n}
    two = checkpoint.load(train.main(tiny_config(tmp_path / "two", stage=stage, **steps(2), **extra)) / stage,
                          "VQ-VAE")
    nan_on_calls(monkeypatch, name, {3})
    run = train.main(tiny_config(tmp_path / "nan", stage=stage, **steps(3), **extra)) / stage
    three = checkpoint.load(run, "VQ-VAE")
    for k, v in three[net].items():  # the whole update of step 3 was skipped (the EMA codebook too)
        assert torch.equal(v, two[net][k]), k
    lines = strict_json_lines(run / "metrics.jsonl")
    assert lines[2]["step"] == 3 and lines[2]["loss"] is None and lines[1]["loss"] > 0
    assert "step 3: non-finite loss; update skipped" in capsys.readouterr().out


def test_nan_losses_every_step_stop_the_run_with_exit_3_and_no_bad_checkpoint(tmp_path, monkeypatch, capsys):
    nan_on_calls(monkeypatch, "reconstruction_loss", None)
    cfg = tiny_config(tmp_path / "run", steps=50, ckpt_every=1)
    exits_with(training.EXIT_DIVERGED, training.run_main, train.main, cfg)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(errors) == 1 and "training diverged: 5 non-finite losses in a row" in errors[0]
    assert captured.out.count("update skipped") == 5
    saved = sorted((tmp_path / "run" / "vqvae" / "checkpoints").glob("*.pt"))
    assert saved and all(not training.non_finite_entries(checkpoint.load(p, "VQ-VAE")) for p in saved)
    assert checkpoint.load(tmp_path / "run" / "vqvae", "VQ-VAE")["step"] == 4
    assert not (tmp_path / "run" / "prior").exists()


# ---------------------------------------------------------------- resume with other flags, unusable VQ-VAEs

def test_resume_with_a_new_lr_uses_it_and_records_it(tmp_path, capsys):
    train.main(tiny_config(tmp_path / "run", steps=2, stage="vqvae"))
    run = train.main(tiny_config(tmp_path / "run", steps=3, lr=1e-2, stage="vqvae", resume="auto")) / "vqvae"
    state = checkpoint.load(run, "VQ-VAE")
    assert state["step"] == 3 and all(g["lr"] == 1e-2 for g in state["opt_vqvae"]["param_groups"])
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-2
    assert "--lr 0.001 -> 0.01" in capsys.readouterr().out


@pytest.mark.parametrize("change", [{"batch_size": 4}, {"hidden": 16}, {"codes": 8}])
def test_resume_with_a_setting_that_cannot_change_exits_2_with_one_line(tmp_path, capsys, change):
    train.main(tiny_config(tmp_path / "run", steps=1, stage="vqvae"))
    capsys.readouterr()
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "run", steps=2, stage="vqvae",
                                                              resume="auto", **change))
    flag = "--" + next(iter(change)).replace("_", "-")
    assert "cannot resume" in (line := one_error_line(capsys)) and flag in line


def test_stage_2_refuses_a_vqvae_checkpoint_it_cannot_use_with_one_line(tmp_path, capsys):
    vq = train.main(tiny_config(tmp_path / "vq", steps=1, stage="vqvae"))
    other = tmp_path / "other.pt"
    checkpoint.save(other, {"model": "DCGAN", "step": 1})
    prior_run = train.main(tiny_config(tmp_path / "p", steps=1, prior_steps=1, stage="prior", vqvae=str(vq)))
    cases = [(str(tmp_path / "missing"), "not found"), (str(other), "DCGAN checkpoint, not VQ-VAE"),
             (str(prior_run / "prior"), "not a stage-1 VQ-VAE checkpoint")]
    capsys.readouterr()
    for path, needle in cases:
        exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "x", 1, stage="prior", vqvae=path))
        assert needle in one_error_line(capsys), path
    exits_with(2, training.run_main, train.main,
               tiny_config(tmp_path / "y", 1, stage="prior", vqvae=str(vq), dataset="shapes"))
    line = one_error_line(capsys)
    assert "trained on mnist at 16x16, not --dataset shapes" in line


# ---------------------------------------------------------------- small and missing data, flags

def test_a_folder_of_five_images_trains_both_stages_and_samples(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8).numpy()).save(images / f"{i}.png")
    out = train.main(tiny_config(tmp_path / "run", steps=3, prior_steps=3, batch_size=4, dataset=f"folder:{images}"))
    for stage in ("vqvae", "prior"):
        state = checkpoint.load(out / stage, "VQ-VAE")
        assert state["step"] == 3 and state["model_config"]["channels"] == 3
        assert json.loads((out / stage / "config.json").read_text())["data_size"] == 5
    samples = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(out), num=4, out=str(samples), reconstructions=0))
    assert len(list(samples.glob("0*.png"))) == 4


@pytest.mark.parametrize("root", ["/nonexistent/data", "empty"])
def test_missing_mnist_files_exit_2_with_one_line_naming_the_path_and_flag(tmp_path, capsys, root):
    root = str(tmp_path) if root == "empty" else root
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "x", steps=1, data_root=root))
    line = one_error_line(capsys)
    assert root in line and "--data-root" in line


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "30"], "multiple of 4"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--stage", "third"], "--stage"),
    (["--codebook", "kmeans"], "ema or loss"),
    (["--prior-share", "1.5"], "--prior-share"),
    (["--prior-width", "30", "--prior-heads", "4"], "divisible"),
    (["--beta", "nan"], "--beta"),
    (["--stage", "both", "--resume", "x.pt"], "--resume auto"),
    (["--prior-sha", "0.5"], "--prior-sha"),  # no abbreviated flags
])
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path, capsys):
    exits_with(2, cli.parse, train.TrainConfig, [*args, "--out", str(tmp_path / "x")], train.check)
    assert needle in one_error_line(capsys)


def test_codebook_loss_mode_trains_the_codebook_by_gradient_and_ema_mode_does_not(tmp_path):
    runs = {mode: train.main(tiny_config(tmp_path / mode, steps=3, stage="vqvae", codebook=mode, dead_threshold=0))
            for mode in ("loss", "ema")}
    loss_lines, ema_lines = (strict_json_lines(runs[m] / "vqvae" / "metrics.jsonl") for m in ("loss", "ema"))
    assert all(r["codebook"] > 0 for r in loss_lines) and "codebook" not in ema_lines[0]
    loss_state, ema_state = (checkpoint.load(runs[m] / "vqvae", "VQ-VAE") for m in ("loss", "ema"))
    assert len(loss_state["opt_vqvae"]["state"]) == len(ema_state["opt_vqvae"]["state"]) + 1  # + the codebook
    torch.manual_seed(0)
    initial = VQVAE(Config(**loss_state["model_config"])).codebook.embedding
    assert not torch.equal(loss_state["vqvae"]["codebook.embedding"], initial)  # moved by the gradient


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
    assert "VAE checkpoint, not VQ-VAE" in one_error_line(capsys)
    no_weights = tmp_path / "no_weights.pt"
    checkpoint.save(no_weights, {"model": "VQ-VAE", "step": 1, "model_config": {"image_size": 16}})
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(no_weights), *out])
    assert "no weights for 'vqvae'" in one_error_line(capsys)
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(junk), "--temperature", "0", *out])
    assert "--temperature" in one_error_line(capsys)


def test_sample_pretrained_loads_an_exported_run(tmp_path, monkeypatch, capsys):
    from shared import pretrained

    out = train.main(tiny_config(tmp_path / "run", steps=1, prior_steps=1))
    exported = pretrained.export(str(out / "prior"), "VQ-VAE", ["vqvae", "prior"],
                                 str(tmp_path / "pretrained" / "vqvae_prior.pt"))
    monkeypatch.setattr(sample_script, "PRETRAINED", exported)
    samples = tmp_path / "samples"
    sample_script.cli_main(["--pretrained", "--num", "3", "--reconstructions", "8", "--out", str(samples)])
    assert len(list(samples.glob("0*.png"))) == 3 and (samples / "reconstructions.png").is_file()
    assert "step 1, --dataset mnist" in capsys.readouterr().out
    vq, prior, _ = sample_script.load_pretrained(torch.device("cpu"))
    saved = checkpoint.load(out / "prior", "VQ-VAE")
    for net, module in (("vqvae", vq), ("prior", prior)):  # the fp16 copy of the run's networks
        for k, v in module.state_dict().items():
            assert torch.allclose(v.float(), saved[net][k].float(), rtol=1e-3, atol=1e-4), (net, k)


def test_sample_pretrained_without_the_file_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "pretrained" / "vqvae_prior.pt"
    monkeypatch.setattr(sample_script, "PRETRAINED", missing)
    exits_with(2, sample_script.cli_main, ["--pretrained", "--out", str(tmp_path / "o")])
    line = one_error_line(capsys)
    assert str(missing) in line and "train" in line and "fetch" in line


def test_shipped_pretrained_networks_load_safely_and_sample(tmp_path):
    """Fails until pretrained/vqvae_prior.pt (made by the default 10-minute MNIST run) is shipped."""
    path = HERE / "pretrained" / "vqvae_prior.pt"
    assert path.is_file(), f"{path} not shipped yet"
    assert path.stat().st_size < 2_000_000
    state = torch.load(path, weights_only=True)
    assert state["model"] == "VQ-VAE" and all(v.dtype == torch.float16 for net in ("vqvae", "prior")
                                              for v in state[net].values() if v.is_floating_point())
    vq, prior, _ = sample_script.load_pretrained(torch.device("cpu"))
    x = sample_script.sample(vq, prior, 4, rng=torch.Generator().manual_seed(0))
    cfg = vq.cfg
    assert x.shape == (4, cfg.channels, cfg.image_size, cfg.image_size) and torch.isfinite(x).all()
    assert x.std() > 0.1  # trained networks, not a constant image
