"""The training script end to end: run folder, sample.py, exact resume (pools and RNG included), the lr schedule
in the loop, signals, torchrun, non-finite losses, flags, a 5-image folder pair, the pretrained generators.
Adapted from DCGAN/tests/test_train.py (the plumbing tests every GAN folder has)."""
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
from model import Config, Generator, PatchDiscriminator, lr_factor
from shared import checkpoint, cli, training

HERE = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "mnist", "--image-size", "16", "--batch-size", "4", "--g-width", "4", "--n-blocks", "1",
        "--d-width", "4", "--pool-size", "3", "--minutes", "0", "--threads", "1", "--precision", "fp32",
        "--log-every", "1", "--sample-every", "2"]
NETS = {"G_AB": Generator, "G_BA": Generator, "D_A": PatchDiscriminator, "D_B": PatchDiscriminator}


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(dataset="mnist", image_size=16, batch_size=4, g_width=4, n_blocks=1, d_width=4, pool_size=3, lr=2e-4,
                minutes=0, threads=1, precision="fp32", log_every=1, sample_every=2, steps=steps, out=str(out),
                ckpt_every=1000)
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


# ---------------------------------------------------------------- a run, on real data

def test_two_steps_on_mnist_write_a_complete_run_folder_that_sample_py_translates(tmp_path, capsys):
    run = train.main(tiny_config(tmp_path / "run", steps=2))
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 2 and config["dataset"] == "mnist" and "inverted" in config["data_source"]
    lines = strict_json_lines(run / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2]
    assert all(r["loss_cyc"] > 0 and r["loss_idt"] > 0 and r["loss_d_a"] > 0 and r["loss_g"] > 10 * r["loss_cyc"]
               for r in lines)  # loss_g = GAN + 10 cyc + 5 idt
    assert (run / "samples" / "step_0000002.png").is_file() and (run / "progress.gif").is_file()
    state = checkpoint.load(run, model="CycleGAN")
    assert state["step"] == 2 and state["model_config"]["channels"] == 1 and state["model_config"]["d_layers"] == 1
    assert len(state["pools"]) == 1 and state["pools"][0][0]["images"].shape == (3, 1, 16, 16)  # full pools saved
    summary = capsys.readouterr().out
    assert "done: 2 steps" in summary and f"python sample.py --checkpoint {run}" in summary

    out = tmp_path / "translations"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=5, out=str(out)))
    for direction in ("AtoB", "BtoA"):
        assert sorted(p.name for p in (out / direction).glob("*.png")) == [f"{i:06d}.png" for i in range(5)]
        from PIL import Image
        w, h = Image.open(out / f"{direction}_panel.png").size
        assert w == 3 * 18 + 2 and h == 5 * 18 + 2  # 3 columns (input | translation | reconstruction), 5 rows


def stop_after(monkeypatch, steps: int) -> None:
    """training.Stopper.poll says 'time budget' at the given step, as a --minutes budget would."""
    real_poll, calls = training.Stopper.poll, [0]

    def poll(self):
        calls[0] += 1
        if calls[0] == steps:
            self.reason = "time budget"
        return real_poll(self)
    monkeypatch.setattr(training.Stopper, "poll", poll)


def test_resume_is_exact_with_pools_rng_and_the_decaying_lr(tmp_path, monkeypatch):
    """6 straight steps logged every step == the same run stopped after 3, resumed, logged every 3rd step. The
    pools (size 3, batch 4) are full and swapping from step 1, the lr decays from step 0 (decay_start 0)."""
    common = dict(decay_start=0.0, steps=6)
    straight = train.main(tiny_config(tmp_path / "a", log_every=1, sample_every=1, **common))
    stop_after(monkeypatch, 3)
    train.main(tiny_config(tmp_path / "b", log_every=3, sample_every=3, **common))
    monkeypatch.undo()
    assert checkpoint.load(tmp_path / "b", "CycleGAN")["step"] == 3
    resumed = train.main(tiny_config(tmp_path / "b", log_every=3, sample_every=3, resume="auto", **common))
    a, b = checkpoint.load(straight, "CycleGAN"), checkpoint.load(resumed, "CycleGAN")
    assert a["step"] == b["step"] == 6
    for net in NETS:
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    for opt in ("opt_g", "opt_d"):
        assert torch.equal(a[opt]["state"][0]["exp_avg"], b[opt]["state"][0]["exp_avg"])
    for pa, pb in zip(a["pools"][0], b["pools"][0]):
        assert torch.equal(pa["images"], pb["images"]) and torch.equal(pa["rng"], pb["rng"])
    assert a["data"] == b["data"]
    lrs = [r["lr"] for r in strict_json_lines(straight / "metrics.jsonl")]
    assert lrs == pytest.approx([2e-4 * lr_factor(s / 6, 0.0) for s in range(6)])  # the lr each step used


def test_the_lr_schedule_in_the_loop_is_constant_then_linear(tmp_path):
    run = train.main(tiny_config(tmp_path / "run", steps=8, sample_every=100))
    lrs = [r["lr"] / 2e-4 for r in strict_json_lines(run / "metrics.jsonl")]
    assert lrs == pytest.approx([1, 1, 1, 1, 1, 0.75, 0.5, 0.25])  # step s uses lr_factor(s / 8)


def test_a_minutes_bound_run_carries_its_elapsed_time_into_the_schedule_on_resume(tmp_path):
    """The schedule runs on the fraction of --minutes used (decay_start 0: lr = (1 - elapsed / budget) lr). A
    resumed run counts the time its checkpoint had already trained, so its first lr is below the plateau."""
    common = dict(steps=10 ** 6, decay_start=0.0, sample_every=10 ** 6)
    first = checkpoint.load(train.main(tiny_config(tmp_path / "run", minutes=0.001, **common)), "CycleGAN")
    assert first["train_seconds"] > 0.06 and first["step"] >= 1  # it ran past its 0.06 s budget
    resumed = train.main(tiny_config(tmp_path / "run", minutes=0.01, resume="auto", **common))  # 0.6 s in all
    lines = strict_json_lines(resumed / "metrics.jsonl")  # the first run's lines, then the resumed run's
    assert lines[first["step"]]["lr"] <= 2e-4 * (1 - first["train_seconds"] / 0.6) + 1e-12


# ---------------------------------------------------------------- signals, torchrun

def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *TINY, "--steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size < 400:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    state = checkpoint.load(out, "CycleGAN")
    assert 0 < state["step"] < 100000 and not training.non_finite_entries(state["G_AB"])
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout + stderr
    assert "--resume auto" in stdout + stderr


def test_torchrun_two_processes_keep_identical_weights_and_their_own_pools(tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "train.py", *TINY, "--steps", "4", "--out", str(out)],
                          cwd=HERE, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr
    state = checkpoint.load(out, "CycleGAN")
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["replicas"]) == 2
    assert state["replicas"][0] == state["replicas"][1]  # every network's parameter digest agrees across ranks
    for net, cls in NETS.items():
        fresh = cls(Config(**state["model_config"]))
        fresh.load_state_dict(state[net])
        assert state["replicas"][0][net] == training.parameters_digest(fresh), net
    assert len(state["pools"]) == 2  # one pair of pools per rank, each from its own batches
    assert not torch.equal(state["pools"][0][0]["images"], state["pools"][1][0]["images"])
    assert [r["step"] for r in strict_json_lines(out / "metrics.jsonl")] == [1, 2, 3, 4]  # rank 0 alone logs


# ---------------------------------------------------------------- non-finite losses, flags

def test_a_nan_generator_loss_skips_that_update_and_never_enters_the_pool(tmp_path, monkeypatch, capsys):
    real_loss, count = train.lsgan_g_loss, [0]

    def loss(scores):
        count[0] += 1
        value = real_loss(scores)
        return value * float("nan") if count[0] in (5, 6) else value  # both directions of step 3
    monkeypatch.setattr(train, "lsgan_g_loss", loss)
    run = train.main(tiny_config(tmp_path / "nan", steps=3, pool_size=50))
    state = checkpoint.load(run, "CycleGAN")
    assert state["pools"][0][0]["images"].shape[0] == 8  # 2 steps of 4 fakes; step 3's were not stored
    lines = strict_json_lines(run / "metrics.jsonl")
    assert lines[2]["loss_g"] is None and lines[1]["loss_g"] > 0
    assert "step 3: non-finite loss_g; update skipped" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "30"], "multiple of 4"),
    (["--dataset", "cifar10"], "domain pair"),
    (["--dataset", "mnist", "--pair", "outline"], "--pair"),
    (["--lambda-cyc", "-1"], "--lambda-cyc"),
    (["--decay-start", "1"], "--decay-start"),
    (["--pool-size", "-2"], "--pool-size"),
    (["--n-blo", "2"], "--n-blo"),  # no abbreviated flags
])
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path, capsys):
    exits_with(2, cli.parse, train.TrainConfig, [*args, "--out", str(tmp_path / "x")], train.check)
    assert needle in one_error_line(capsys)


def test_resume_with_a_setting_that_cannot_change_exits_2_with_one_line(tmp_path, capsys):
    train.main(tiny_config(tmp_path / "run", steps=1))
    capsys.readouterr()
    exits_with(2, training.run_main, train.main, tiny_config(tmp_path / "run", steps=2, resume="auto", n_blocks=2))
    assert "cannot resume" in (line := one_error_line(capsys)) and "--n-blocks" in line


# ---------------------------------------------------------------- a 5-image folder pair

def test_a_folder_pair_of_five_images_trains_translates_and_evaluates(tmp_path, monkeypatch):
    import evaluate
    from PIL import Image
    from shared import features

    root = tmp_path / "pair"
    for part in ("trainA", "trainB", "testA", "testB"):
        (root / part).mkdir(parents=True)
        for i in range(5):
            colour = (200, 30, 30) if part.endswith("A") else (30, 30, 200)
            noise = torch.randint(0, 40, (20, 20, 3), dtype=torch.uint8)
            Image.fromarray((torch.tensor(colour, dtype=torch.uint8) + noise).numpy()).save(root / part / f"{i}.png")
    run = train.main(tiny_config(tmp_path / "run", steps=3, dataset=f"folder:{root}"))
    state = checkpoint.load(run, "CycleGAN")
    assert state["step"] == 3 and state["model_config"]["channels"] == 3
    out = tmp_path / "translations"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=5, out=str(out)))
    assert len(list((out / "AtoB").glob("*.png"))) == 5 and (out / "BtoA_panel.png").is_file()

    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=30, batch_size=10))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=10))
    assert "translation_mse" not in record  # no ground truth in a folder pair
    assert 0 <= record["translation_accuracy_ab"] <= 1 and record["num_translated"] == 5
    assert "domain" in record["extractor"]  # the A-vs-B classifier of the folder's own images


# ---------------------------------------------------------------- sample.py: pretrained weights, bad inputs

def test_sample_pretrained_loads_an_exported_run(tmp_path, monkeypatch, capsys):
    run = train.main(tiny_config(tmp_path / "run", steps=1))
    exported = sample_script.export_pretrained(str(run), tmp_path / "pretrained" / "generators.pt")
    monkeypatch.setattr(sample_script, "PRETRAINED", exported)
    out = tmp_path / "translations"
    sample_script.cli_main(["--pretrained", "--num", "3", "--out", str(out)])
    assert len(list((out / "AtoB").glob("*.png"))) == 3 and "step 1, --dataset mnist" in capsys.readouterr().out
    G_AB, G_BA, _ = sample_script.load_generators(exported, "cpu", pretrained=True)
    saved = checkpoint.load(run, "CycleGAN")
    for G, key in ((G_AB, "G_AB"), (G_BA, "G_BA")):
        for k, v in G.state_dict().items():  # the fp16 copy of the run's generators
            assert torch.allclose(v, saved[key][k].float(), rtol=1e-3, atol=1e-4), k


def test_sample_py_errors_are_one_line(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "pretrained" / "generators.pt"
    monkeypatch.setattr(sample_script, "PRETRAINED", missing)
    exits_with(2, sample_script.cli_main, ["--pretrained", "--out", str(tmp_path / "o")])
    assert str(missing) in (line := one_error_line(capsys)) and "train" in line
    other = tmp_path / "other.pt"
    checkpoint.save(other, {"model": "DCGAN", "step": 1})
    exits_with(2, sample_script.cli_main, ["--checkpoint", str(other), "--out", str(tmp_path / "o")])
    assert "DCGAN checkpoint, not CycleGAN" in one_error_line(capsys)


def test_shipped_pretrained_generators_load_safely_and_translate(tmp_path):
    """Fails until pretrained/generators.pt (from the default 10-minute shapes run) is shipped."""
    path = HERE / "pretrained" / "generators.pt"
    assert path.is_file(), f"{path} not shipped yet"
    assert path.stat().st_size < 2_000_000
    state = torch.load(path, weights_only=True)
    assert state["model"] == "CycleGAN" and state["dataset"] == "shapes"
    assert all(v.dtype == torch.float16 for key in ("G_AB", "G_BA") for v in state[key].values())
    G_AB, G_BA, _ = sample_script.load_generators(path, "cpu", pretrained=True)
    x = torch.rand(2, G_AB.cfg.channels, G_AB.cfg.image_size, G_AB.cfg.image_size) * 2 - 1
    y = G_AB(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and (y - x).abs().mean() > 0.01  # it translates
