"""The training script end to end: run folder, sample.py, exact resume, signals, torchrun, non-finite losses,
resume with changed flags, tiny datasets, CLI errors, the pretrained weights."""
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
from model import VAE, Config
from shared import checkpoint, cli, training
from shared.testing import children, environ, exits_with, one_error_line, strict_json_lines

HERE = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "16", "--batch-size", "8", "--z-dim", "4", "--width", "4", "--hidden", "16",
        "--threads", "1", "--precision", "fp32", "--log-every", "1", "--sample-every", "2"]


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(image_size=16, batch_size=8, z_dim=4, width=4, hidden=16, threads=1, precision="fp32",
                log_every=1, sample_every=2, steps=steps, out=str(out), ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def parameters(state: dict) -> dict[str, torch.Tensor]:
    model = VAE(Config(**state["model_config"]))
    model.load_state_dict(state["vae"])
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# ---------------------------------------------------------------- a run, on real data

def test_two_steps_on_embedded_mnist_write_a_complete_run_folder_that_sample_py_loads(tmp_path, capsys):
    run = train.main(tiny_config(tmp_path / "run", steps=2))  # the default dataset: the embedded MNIST copy
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 2 and config["dataset"] == "mnist" and config["likelihood"] == "auto"
    assert "embedded" in config["data_source"] and config["data_size"] == 5000
    assert config["model_config"]["likelihood"] == "bernoulli"  # auto on 1-channel data
    lines = strict_json_lines(run / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2]
    for r in lines:
        assert 0 < r["kl"] and 0 < r["rec"] < 16 * 16 * 2  # an untrained Bernoulli decoder: about D ln 2 nats
        assert r["nelbo"] == pytest.approx(r["rec"] + r["kl"], rel=1e-5) == pytest.approx(r["loss"], rel=1e-5)
        assert sum(r[f"kl_dim/{j:02d}"] for j in range(4)) == pytest.approx(r["kl"], rel=1e-4)
        assert 0 <= r["active_dims"] <= 4 and "beta" not in r
    assert (run / "samples" / "step_0000002.png").is_file() and (run / "progress.gif").is_file()
    assert (run / "reconstructions" / "step_0000002.png").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    state = checkpoint.load(run, model="VAE")
    assert state["step"] == 2 and state["model_config"]["image_size"] == 16 and state["model_config"]["channels"] == 1
    summary = capsys.readouterr().out
    assert "done: 2 steps" in summary and f"python sample.py --checkpoint {run}" in summary

    out = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=5, out=str(out), interpolations=2))
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(5)]
    assert (out / "grid.png").is_file() and (out / "interpolation.png").is_file()


@pytest.mark.parametrize("extra", [{}, {"likelihood": "gaussian", "kl_warmup": 4}], ids=["bernoulli", "gaussian-warmup"])
def test_resume_is_exact_and_logging_never_changes_training(tmp_path, extra):
    """6 straight steps logged and sampled every step == 3 steps, stop, resume, 3 more, logged every 3rd step: if
    logging or sampling drew from the RNG (binarisation, dequantisation and eps all come from it), weights would differ."""
    straight = train.main(tiny_config(tmp_path / "a", steps=6, log_every=1, sample_every=1, **extra))
    sparse = dict(log_every=3, sample_every=3, **extra)
    train.main(tiny_config(tmp_path / "b", steps=3, **sparse))
    resumed = train.main(tiny_config(tmp_path / "b", steps=6, resume="auto", **sparse))
    a, b = checkpoint.load(straight, "VAE"), checkpoint.load(resumed, "VAE")
    assert a["step"] == b["step"] == 6
    for k in a["vae"]:
        assert torch.equal(a["vae"][k], b["vae"][k]), f"{k} differs after resume"
    assert torch.equal(a["opt"]["state"][0]["exp_avg"], b["opt"]["state"][0]["exp_avg"])
    assert a["data"] == b["data"]
    lines = strict_json_lines(resumed / "metrics.jsonl")
    assert [r["step"] for r in lines] == [3, 6]
    if extra:  # beta = min(1, step / 4): 3/4 at step 3, then 1
        assert [r["beta"] for r in lines] == [0.75, 1.0]
        assert lines[0]["loss"] == pytest.approx(lines[0]["rec"] + 0.75 * lines[0]["kl"], rel=1e-5)


# ---------------------------------------------------------------- signals, torchrun

def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *TINY, "--steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size < 2000:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    state = checkpoint.load(out, "VAE")
    assert 0 < state["step"] < 100000 and not training.non_finite_entries(state["vae"])
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout + stderr
    assert "--resume auto" in stdout + stderr


def test_torchrun_two_processes_stop_together_when_one_rank_is_signalled(tmp_path):
    """2 CPU processes; SIGTERM to rank 1 only: both ranks stop at the same step, one good checkpoint holds
    identical replicas (their digests are those of the saved weights), and the job ends."""
    out = tmp_path / "ddp"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py", *TINY, "--steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 240
        while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size < 4000:
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
    state = checkpoint.load(out, "VAE")
    assert 2 < state["step"] < 100000 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout + stderr  # rank 0 heard rank 1's signal
    # each rank binarised its images and drew its eps from its own stream: the saved RNG states differ
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert [r["step"] for r in strict_json_lines(out / "metrics.jsonl")] == list(range(1, state["step"] + 1))
    assert len(state["replicas"]) == 2 and state["replicas"][0] == state["replicas"][1]
    fresh = VAE(Config(**state["model_config"]))
    fresh.load_state_dict(state["vae"])
    assert state["replicas"][0]["vae"] == training.parameters_digest(fresh)


# ---------------------------------------------------------------- non-finite losses

def nan_on_calls(monkeypatch, calls: set[int] | None) -> None:
    """train.negative_elbo returns nan on the given calls (1-based; None = every call)."""
    real_loss, count = train.negative_elbo, [0]

    def loss(*args):
        count[0] += 1
        value = real_loss(*args)
        return value * float("nan") if calls is None or count[0] in calls else value
    monkeypatch.setattr(train, "negative_elbo", loss)


def test_a_nan_loss_skips_that_update_and_keeps_metrics_strict_json(tmp_path, monkeypatch, capsys):
    two = checkpoint.load(train.main(tiny_config(tmp_path / "two", steps=2)), "VAE")
    nan_on_calls(monkeypatch, {3})
    run = train.main(tiny_config(tmp_path / "nan", steps=3))
    three = checkpoint.load(run, "VAE")
    for k, v in parameters(three).items():  # step 3's update was skipped: the weights are those after step 2
        assert torch.equal(v, parameters(two)[k]), k
    assert not torch.equal(three["rng"][0]["torch"], two["rng"][0]["torch"])  # step 3 did run (and drew noise)
    lines = strict_json_lines(run / "metrics.jsonl")
    assert lines[2]["step"] == 3 and lines[2]["loss"] is None and lines[1]["loss"] > 0
    assert "step 3: non-finite loss; update skipped" in capsys.readouterr().out


def test_nan_losses_every_step_stop_the_run_with_exit_3_and_no_bad_checkpoint(tmp_path, monkeypatch, capsys):
    nan_on_calls(monkeypatch, None)
    cfg = tiny_config(tmp_path / "run", steps=50, ckpt_every=1)
    exits_with(training.EXIT_DIVERGED, training.run_main, train.main, cfg)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.replace("\r", "\n").splitlines() if "error:" in line]  # not the bar
    assert len(errors) == 1 and "training diverged: 5 non-finite losses in a row" in errors[0]
    assert captured.out.count("update skipped") == 5
    saved = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert saved and all(not training.non_finite_entries(checkpoint.load(p, "VAE")) for p in saved)
    assert checkpoint.load(tmp_path / "run", "VAE")["step"] == 4


# ---------------------------------------------------------------- resume with other flags

def test_resume_with_a_new_lr_uses_it_and_records_it(tmp_path, capsys):
    train.main(tiny_config(tmp_path / "run", steps=2))
    run = train.main(tiny_config(tmp_path / "run", steps=3, lr=3e-4, resume="auto"))
    state = checkpoint.load(run, "VAE")
    assert state["step"] == 3 and all(g["lr"] == 3e-4 for g in state["opt"]["param_groups"])
    assert json.loads((run / "config.json").read_text())["lr"] == 3e-4
    assert "--lr 0.002 -> 0.0003" in capsys.readouterr().out


@pytest.mark.parametrize("change", [{"batch_size": 4}, {"width": 8}, {"likelihood": "logistic"}])
def test_resume_with_a_setting_that_cannot_change_exits_2_with_one_line(tmp_path, capsys, change):
    train.main(tiny_config(tmp_path / "run", steps=1))
    capsys.readouterr()
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "run", steps=2, resume="auto", **change))
    flag = "--" + next(iter(change)).replace("_", "-")
    assert "cannot resume" in (line := one_error_line(capsys)) and flag in line


# ---------------------------------------------------------------- small and missing data

def test_a_folder_of_five_rgb_images_trains_with_the_logistic_decoder_and_samples(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8).numpy()).save(images / f"{i}.png")
    run = train.main(tiny_config(tmp_path / "run", steps=3, batch_size=4, dataset=f"folder:{images}"))
    state = checkpoint.load(run, "VAE")
    assert state["step"] == 3 and state["model_config"]["channels"] == 3
    assert state["model_config"]["likelihood"] == "logistic"  # auto on RGB
    assert json.loads((run / "config.json").read_text())["data_size"] == 5
    # a random-pixel image under a flat logistic: about log 256 nats per dim, far from 0
    assert 3 * 16 * 16 * 2 < strict_json_lines(run / "metrics.jsonl")[0]["rec"] < 3 * 16 * 16 * 8
    out = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=4, out=str(out), interpolations=0))
    assert len(list(out.glob("0*.png"))) == 4


@pytest.mark.parametrize("root", ["/nonexistent/data", "empty"])
def test_missing_mnist_files_exit_2_with_one_line_naming_the_path_and_flag(tmp_path, capsys, root):
    root = str(tmp_path) if root == "empty" else root
    cfg = tiny_config(tmp_path / "x", steps=1, data_root=root)  # --data-root means the full torchvision MNIST
    exits_with(2, training.run_main, train.main, cfg)
    line = one_error_line(capsys)
    assert root in line and "--data-root" in line


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "30"], "--image-size"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--likelihood", "poisson"], "--likelihood"),
    (["--gaussian-variance", "tied"], "--gaussian-variance"),
    (["--gaussian-std", "0"], "--gaussian-std"),
    (["--kl-warmup", "-1"], "--kl-warmup"),
    (["--grad-clip", "-1"], "--grad-clip"),
    (["--z-dim", "0"], "--z-dim"),
    (["--kl-warm", "2"], "--kl-warm"),  # no abbreviated flags
])
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path, capsys):
    """Parse-time errors, in-process (train.py's __main__ runs exactly this parse)."""
    exits_with(2, cli.parse, train.TrainConfig, [*args, "--out", str(tmp_path / "x")], train.check)
    assert needle in one_error_line(capsys)


@pytest.mark.parametrize("args, lr", [
    ([], 2e-3), (["--dataset", "fashion-mnist"], 2e-3), (["--dataset", "shapes"], 5e-4),
    (["--dataset", "folder:imgs"], 5e-4), (["--dataset", "shapes", "--likelihood", "bernoulli"], 2e-3),
    (["--likelihood", "gaussian"], 5e-4), (["--dataset", "shapes", "--lr", "1e-3"], 1e-3), (["--lr", "2e-3"], 2e-3),
])
def test_lr_defaults_to_the_likelihoods_rate_unless_given(args, lr, tmp_path):
    cfg = cli.parse(train.TrainConfig, [*args, "--out", str(tmp_path / "x")], train.check,
                    defaults=train.apply_likelihood_defaults)
    assert cfg.lr == lr


# ---------------------------------------------------------------- sample.py: bad checkpoints, pretrained weights

def test_sample_py_rejects_bad_checkpoints_with_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(junk), *out])
    assert "corrupt or truncated" in one_error_line(capsys)

    other = tmp_path / "other.pt"
    checkpoint.save(other, {"model": "DCGAN", "step": 1})
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(other), *out])
    assert "DCGAN checkpoint, not VAE" in one_error_line(capsys)

    no_weights = tmp_path / "no_weights.pt"
    checkpoint.save(no_weights, {"model": "VAE", "step": 1, "model_config": {"image_size": 16}})
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(no_weights), *out])
    assert "no weights for 'vae'" in one_error_line(capsys)


def test_sample_pretrained_loads_an_exported_run(tmp_path, monkeypatch, capsys):
    run = train.main(tiny_config(tmp_path / "run", steps=1))
    decoder, encoder = sample_script.export_pretrained(run, tmp_path / "pretrained")
    monkeypatch.setattr(sample_script, "PRETRAINED", decoder)
    out = tmp_path / "samples"
    sample_script.cli_main(["--pretrained", "--num", "3", "--interpolations", "0", "--out", str(out)])
    assert len(list(out.glob("0*.png"))) == 3 and "step 1, --dataset mnist" in capsys.readouterr().out
    model, state = sample_script.load_pretrained(torch.device("cpu"))
    assert state["encoder_loaded"]
    saved = checkpoint.load(run, "VAE")["vae"]
    for k, v in model.state_dict().items():  # the fp16 copy of the run's encoder and decoder
        assert torch.allclose(v.float(), saved[k].float(), rtol=1e-3, atol=1e-4), k
    encoder.unlink()  # the decoder alone still samples; the encoder is then left at its initialisation
    assert not sample_script.load_pretrained(torch.device("cpu"))[1]["encoder_loaded"]


def test_sample_pretrained_without_the_file_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "pretrained" / "decoder.pt"
    monkeypatch.setattr(sample_script, "PRETRAINED", missing)
    exits_with(2, sample_script.cli_main, ["--pretrained", "--out", str(tmp_path / "o")])
    line = one_error_line(capsys)
    assert str(missing) in line and "train" in line and "fetch" in line


def test_shipped_pretrained_vae_loads_safely_samples_and_reconstructs(tmp_path):
    """pretrained/decoder.pt and encoder.pt, made from the default 10-minute MNIST run."""
    from model import reconstruct
    from shared.data import load_dataset, to_float

    for name in ("decoder", "encoder"):
        path = HERE / "pretrained" / f"{name}.pt"
        assert path.is_file() and path.stat().st_size < 2_000_000, path
        state = torch.load(path, weights_only=True)
        assert state["model"] == "VAE" and all(v.dtype == torch.float16 for v in state[name].values()
                                               if v.is_floating_point())
    model, state = sample_script.load_pretrained(torch.device("cpu"))
    assert state["encoder_loaded"]
    x = sample_script.sample(model, 4, rng=torch.Generator().manual_seed(0))
    cfg = model.cfg
    assert x.shape == (4, cfg.channels, cfg.image_size, cfg.image_size) and torch.isfinite(x).all()
    assert x.std() > 0.1  # a trained decoder, not a constant image
    test = to_float(load_dataset("mnist", None, cfg.image_size, "test").images[:16])
    assert ((reconstruct(model, test) - test) ** 2).mean() < 0.5 * test.var()  # reconstructions resemble the inputs
