"""The training script end to end: run folder, real MNIST, exact resume, signals, torchrun, non-finite losses,
changed flags on resume, a tiny folder, CollapseWatch, sample.py (checkpoints and --pretrained), CLI errors."""
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
from model import Config, Discriminator, Encoder, Generator
from shared import checkpoint, cli, copies, pretrained, training
from shared.testing import strict_json_lines

HERE = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "16", "--batch-size", "8", "--z-dim", "8", "--g-width", "8", "--e-width", "8",
        "--d-width", "8", "--d-joint", "16", "--threads", "1", "--precision", "fp32", "--log-every", "1",
        "--sample-every", "2"]
NETWORKS = {"G": Generator, "E": Encoder, "D": Discriminator}


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(image_size=16, batch_size=8, z_dim=8, g_width=8, e_width=8, d_width=8, d_joint=16, threads=1,
                precision="fp32", log_every=1, sample_every=2, steps=steps, out=str(out), ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for net in NETWORKS for v in state[net].values() if v.is_floating_point())


def test_a_few_steps_on_the_embedded_mnist_write_a_complete_run_folder_that_sample_py_loads(tmp_path):
    run = train.main(tiny_config(tmp_path / "run", steps=2, dataset="mnist", data_root=""))
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 2 and config["data_size"] == 5000 and "embedded MNIST" in config["data_source"]
    lines = strict_json_lines(run / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2]
    for r in lines:
        assert 0 < r["loss_d"] < 10 and 0 < r["loss_eg"] < 10
        assert 0 < r["d_real"] < 1 and 0 < r["d_fake"] < 1 and r["code_std"] > 0
    assert (run / "samples" / "step_0000002.png").is_file() and (run / "progress.gif").is_file()
    with Image.open(run / "reconstructions" / "step_0000002.png") as img:  # 4 row pairs of 8 images of 16 px
        assert img.size == (8 * 18 + 2, 8 * 18 + 2)
    assert list(run.glob("events.out.tfevents.*"))
    state = checkpoint.load(run, model="BiGAN")
    assert state["step"] == 2 and state["model_config"]["image_size"] == 16 and state["model_config"]["channels"] == 1
    assert {"G", "E", "D", "opt_eg", "opt_d"} <= state.keys()

    out = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=5, out=str(out), interpolations=2,
                                                  reconstructions=16))
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(5)]
    for name in ("grid.png", "interpolation.png", "reconstructions.png"):
        assert (out / name).is_file(), name


def test_reconstruction_grid_alternates_real_rows_and_their_reconstructions():
    torch.manual_seed(0)
    from model import reconstruct

    cfg = Config(image_size=16, channels=1, z_dim=8, g_width=8, e_width=8)
    G, E = Generator(cfg).eval(), Encoder(cfg).eval()
    x = torch.rand(16, 1, 16, 16) * 2 - 1
    rows = sample_script.reconstruction_grid(G, E, x, per_row=8)  # (32, 1, 16, 16): x[:8], rec[:8], x[8:], rec[8:]
    assert rows.shape == (32, 1, 16, 16)
    rec = reconstruct(G, E, x)
    assert torch.equal(rows[:8], x[:8]) and torch.equal(rows[16:24], x[8:])
    assert torch.allclose(rows[8:16], rec[:8]) and torch.allclose(rows[24:], rec[8:])


def test_resume_is_exact_and_logging_and_sampling_do_not_change_training(tmp_path):
    """5 steps logged every step and never sampled == 2 steps, stop, resume, 3 more, logged every 3 steps and
    sampled every 2 (plus the forced sample and log at the stop): dropout masks, BatchNorm statistics, spectral
    norm vectors and Adam moments included. Logging that drew random numbers or ran G/E in train mode would fail."""
    straight = train.main(tiny_config(tmp_path / "a", steps=5, log_every=1, sample_every=1000))
    split = dict(log_every=3, sample_every=2)
    train.main(tiny_config(tmp_path / "b", steps=2, **split))
    resumed = train.main(tiny_config(tmp_path / "b", steps=5, resume="auto", **split))
    a, b = checkpoint.load(straight, "BiGAN"), checkpoint.load(resumed, "BiGAN")
    assert a["step"] == b["step"] == 5
    for net in NETWORKS:
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    for opt in ("opt_eg", "opt_d"):
        for i, s in a[opt]["state"].items():
            assert torch.equal(s["exp_avg"], b[opt]["state"][i]["exp_avg"]), opt
            assert torch.equal(s["exp_avg_sq"], b[opt]["state"][i]["exp_avg_sq"]), opt
    assert a["data"] == b["data"]
    assert [r["step"] for r in strict_json_lines(resumed / "metrics.jsonl")] == [2, 3, 5]


def test_sigterm_saves_a_good_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", *TINY, "--steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size < 200:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    state = checkpoint.load(out, "BiGAN")
    assert 0 < state["step"] < 100000 and all_finite(state)
    assert "--resume auto" in stdout + stderr


def worker_pids(parent: int) -> dict[int, int]:
    """{RANK: pid} of the processes whose parent is `parent` and whose environment holds RANK."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        rank = [e[5:] for e in env if e.startswith(b"RANK=")]
        if ppid == parent and rank:
            found[int(rank[0])] = int(entry.name)
    return found


def test_torchrun_two_processes_stop_together_when_one_rank_is_signalled(tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_port=29543", "train.py", *TINY, "--steps", "100000", "--out", str(out)],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 180
        while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size < 300:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
            time.sleep(0.2)
        workers = worker_pids(proc.pid)
        assert sorted(workers) == [0, 1], workers
        os.kill(workers[1], signal.SIGTERM)  # rank 1 only: rank 0 must learn of it and stop at the same step
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "terminate called" not in stderr
    assert "stopped at step" in stdout + stderr and "SIGTERM" in stdout + stderr  # rank 0's summary
    state = checkpoint.load(out, "BiGAN")
    assert 0 < state["step"] < 100000 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank drew its own noise
    steps = [r["step"] for r in strict_json_lines(out / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == state["step"]  # rank 0 alone logs, once per step
    # the replicas stayed identical, and their digest is that of the saved weights
    assert state["replicas"][0] == state["replicas"][1]
    mcfg = Config(**state["model_config"])
    for name, cls in NETWORKS.items():
        fresh = cls(mcfg)
        fresh.load_state_dict(state[name])
        assert state["replicas"][0][name] == training.parameters_digest(fresh), name
    assert all_finite(state)


def nan_on(calls: set[int] | None, loss_fn):
    """loss_fn returning nan on the given 1-based calls (every call if None)."""
    count = [0]

    def patched(*args):
        count[0] += 1
        loss = loss_fn(*args)
        return loss * float("nan") if calls is None or count[0] in calls else loss

    return patched


def test_a_nan_loss_skips_that_update_with_a_warning_and_metrics_stay_strict_json(tmp_path, monkeypatch, capsys):
    before = checkpoint.load(train.main(tiny_config(tmp_path / "two", steps=2)), "BiGAN")  # D after 2 steps
    monkeypatch.setattr(train, "discriminator_loss", nan_on({3}, train.discriminator_loss))
    run = train.main(tiny_config(tmp_path / "nan", steps=3))
    after = checkpoint.load(run, "BiGAN")
    assert "non-finite loss_d; update skipped" in capsys.readouterr().out
    d_parameters = [name for name, _ in Discriminator(Config(**after["model_config"])).named_parameters()]
    for name in d_parameters:  # step 3's D update was skipped: D's parameters are step 2's
        assert torch.equal(after["D"][name], before["D"][name]), name
    assert not torch.equal(after["G"]["to_image.weight"], before["G"]["to_image.weight"])  # E/G still stepped
    records = strict_json_lines(run / "metrics.jsonl")
    assert records[-1]["step"] == 3 and records[-1]["loss_d"] is None and 0 < records[-1]["d_fake"] < 1
    assert all_finite(after)


def test_nan_every_step_stops_the_run_with_exit_3_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "discriminator_loss", nan_on(None, train.discriminator_loss))
    cfg = tiny_config(tmp_path / "run", steps=50, ckpt_every=2)
    with pytest.raises(SystemExit) as exit_info:
        training.run_main(train.main, cfg)
    assert exit_info.value.code == training.EXIT_DIVERGED == 3
    err = capsys.readouterr().err  # the progress bar, then the one-line error
    last = err.strip().splitlines()[-1]
    assert last.endswith("error: " + last.split("error: ", 1)[-1]) and "diverged" in last, last
    assert "Traceback" not in err
    state = checkpoint.load(tmp_path / "run", "BiGAN")
    assert state["step"] == 4 and all_finite(state)  # checkpoints at 2 and 4; the 5th nan in a row stopped it
    assert all(all_finite(checkpoint.load(p, "BiGAN")) for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))


def test_resume_with_a_new_lr_uses_it_in_the_optimizers_and_config_json(tmp_path, capsys):
    train.main(tiny_config(tmp_path / "run", steps=2, lr=2e-4, lr_d=4e-4))
    run = train.main(tiny_config(tmp_path / "run", steps=3, resume="auto", lr=1e-3, lr_d=5e-4))
    state = checkpoint.load(run, "BiGAN")
    assert [g["lr"] for g in state["opt_eg"]["param_groups"]] == [1e-3]
    assert [g["lr"] for g in state["opt_d"]["param_groups"]] == [5e-4]
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 1e-3 and config["lr_d"] == 5e-4
    out = capsys.readouterr().out
    assert "--lr 0.0002 -> 0.001" in out and "--lr-d 0.0004 -> 0.0005" in out


@pytest.mark.parametrize("change,flag", [(dict(batch_size=4), "--batch-size"), (dict(d_joint=32), "--d-joint")])
def test_resume_with_another_batch_size_or_width_exits_2_with_one_line(tmp_path, capsys, change, flag):
    train.main(tiny_config(tmp_path / "run", steps=1))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        training.run_main(train.main, tiny_config(tmp_path / "run", steps=2, resume="auto", **change))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "Traceback" not in err[0], err
    assert checkpoint.load(tmp_path / "run", "BiGAN")["step"] == 1  # the run was left as it was


def test_a_folder_of_5_images_trains_to_the_end_and_samples(tmp_path):
    """Fewer images than the 32 of the reconstruction monitor (issue 18, fault 6: this crashed at step 1)."""
    folder = tmp_path / "five"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(5):
        pixels = torch.randint(0, 256, (20, 20, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    run = train.main(tiny_config(tmp_path / "run", steps=3, dataset=f"folder:{folder}", batch_size=4))
    state = checkpoint.load(run, "BiGAN")
    assert state["step"] == 3 and state["model_config"]["channels"] == 3 and all_finite(state)
    for step in (2, 3):
        assert (run / "samples" / f"step_{step:07d}.png").is_file()
        with Image.open(run / "reconstructions" / f"step_{step:07d}.png") as img:  # one row pair of all 5 images
            assert img.size == (5 * 18 + 2, 2 * 18 + 2)
    out = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=4, out=str(out), interpolations=1))
    with Image.open(out / "reconstructions.png") as img:
        assert img.size == (5 * 18 + 2, 2 * 18 + 2)


def test_collapse_watch_warns_once_when_d_fake_stays_below_its_threshold():
    watch = train.CollapseWatch(start_step=0)
    assert watch.update(10, 0.3) is None
    assert all(watch.update(s, 0.001) is None for s in range(20, 510, 10))  # below 0.01, but not yet 500 steps
    warning = watch.update(510, 0.001)
    assert warning is not None and "since step 10" in warning
    assert watch.update(520, 0.001) is None  # once per episode
    assert watch.update(530, 0.2) is None and watch.update(1020, 0.001) is None  # recovered: a new episode


def test_train_feeds_collapse_watch_the_logged_d_fake_and_prints_its_warning(tmp_path, monkeypatch, capsys):
    seen = []

    class Watch(train.CollapseWatch):
        def __init__(self, start_step):
            super().__init__(start_step, threshold=1.1, span=2)  # every probability is below 1.1: fires at step 2

        def update(self, step, d_fake):
            seen.append((step, d_fake))
            return super().update(step, d_fake)

    monkeypatch.setattr(train, "CollapseWatch", Watch)
    run = train.main(tiny_config(tmp_path / "run", steps=3))
    logged = [(r["step"], r["d_fake"]) for r in strict_json_lines(run / "metrics.jsonl")]
    assert seen == logged and len(seen) == 3
    assert "warning: D(G(z)) has stayed below 1.1 since step 0" in capsys.readouterr().out


def test_lr_d_is_ds_rate_and_zero_means_lr(tmp_path):
    """--lr-d sets D's Adam rate only (E and G share --lr); --lr-d 0 gives D --lr too."""
    state = checkpoint.load(train.main(tiny_config(tmp_path / "a", steps=1, lr=1e-4, lr_d=3e-4)), "BiGAN")
    assert state["opt_d"]["param_groups"][0]["lr"] == 3e-4 and state["opt_eg"]["param_groups"][0]["lr"] == 1e-4
    state = checkpoint.load(train.main(tiny_config(tmp_path / "b", steps=1, lr=1e-4, lr_d=0)), "BiGAN")
    assert state["opt_d"]["param_groups"][0]["lr"] == 1e-4


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "24"], "power of two"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--steps", "ten"], "--steps"),
    (["--encoder", "vae"], "--encoder"),
    (["--d-norm", "layer"], "--d-norm"),
    (["--d-joint", "0"], "--d-joint"),
    (["--lr-d", "-1"], "--lr-d"),
    (["--lr-d", "nan"], "--lr-d"),
])
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path, capsys):
    """Parse-time errors, in-process (train.py's __main__ runs exactly this parse)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.parse(train.TrainConfig, [*args, "--out", str(tmp_path / "x")], check=train.check)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


def test_missing_data_exits_2_with_one_line_naming_the_path(tmp_path, capsys):
    """A run-time error, as train.py's __main__ runs it: one line naming the path, no traceback."""
    cfg = cli.parse(train.TrainConfig, ["--dataset", "mnist", "--data-root", "/nonexistent/data",
                                        "--out", str(tmp_path / "x")], check=train.check)
    with pytest.raises(SystemExit) as exit_info:
        training.run_main(train.main, cfg)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "/nonexistent/data" in lines[0], lines


def sample_py_error(argv: list[str], capsys) -> str:
    """sample.py's command line in-process: assert it exits 2 with one line on stderr, and return that line."""
    with pytest.raises(SystemExit) as exit_info:
        sample_script.run(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    return lines[0]


def test_sample_py_rejects_bad_checkpoints(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    assert "corrupt" in sample_py_error(["--checkpoint", str(junk), "--out", str(tmp_path / "o")], capsys)
    other = tmp_path / "other.pt"
    checkpoint.save(other, {"model": "DCGAN", "step": 1})
    assert "DCGAN checkpoint, not BiGAN" in sample_py_error(["--checkpoint", str(other), "--out", str(tmp_path)],
                                                             capsys)
    missing = tmp_path / "missing.pt"  # the right model name, no E weights: one line, not a traceback
    checkpoint.save(missing, {"model": "BiGAN", "step": 1, "model_config": {"image_size": 16, "channels": 1},
                              "G": Generator(Config(image_size=16, channels=1)).state_dict()})
    assert "no weights for 'E'" in sample_py_error(["--checkpoint", str(missing), "--out", str(tmp_path)], capsys)


def test_sample_py_out_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "is a file" in sample_py_error(["--pretrained", "--out", str(tmp_path / "file")], capsys)


def test_sample_py_pretrained_without_the_file_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "pretrained" / "generator.pt"
    monkeypatch.setattr(sample_script, "PRETRAINED", missing)
    line = sample_py_error(["--pretrained", "--out", str(tmp_path / "o")], capsys)
    assert str(missing) in line and "train" in line and "fetch" in line, line


def test_sample_py_pretrained_samples_and_reconstructs_from_an_exported_g_and_e(tmp_path, monkeypatch):
    """What the lead ships (python -m shared.pretrained RUN --model BiGAN --keys G E), made from a tiny MNIST run."""
    run = train.main(tiny_config(tmp_path / "run", steps=2, dataset="mnist", data_root=""))
    path = pretrained.export(str(run), "BiGAN", ["G", "E"], str(tmp_path / "generator.pt"))
    raw = torch.load(path, weights_only=True)
    assert raw["G"]["to_image.weight"].dtype == torch.float16 and "D" not in raw
    monkeypatch.setattr(sample_script, "PRETRAINED", path)
    monkeypatch.chdir(tmp_path)  # the file is found next to sample.py, not in the cwd
    out = sample_script.main(sample_script.SampleConfig(pretrained=True, num=4, out=str(tmp_path / "o"),
                                                        interpolations=1, reconstructions=8))
    with Image.open(out / "reconstructions.png") as img:  # one row pair of 8 embedded MNIST test images
        assert img.size == (8 * 18 + 2, 2 * 18 + 2) and img.mode in ("L", "RGB")
    G, E, _ = sample_script.load_pretrained(torch.device("cpu"))
    trained = checkpoint.load(run, "BiGAN")
    assert torch.allclose(G.to_image.weight, trained["G"]["to_image.weight"], atol=1e-3)  # fp16 round trip
    assert torch.allclose(E.to_code.weight, trained["E"]["to_code.weight"], atol=1e-3)


def test_shipped_pretrained_weights_load_safely_are_small_and_sample():
    """pretrained/generator.pt (G and E of the default MNIST run). Fails until the file is shipped."""
    path = sample_script.PRETRAINED
    assert path.is_file(), f"{path} is not shipped yet"
    assert path.stat().st_size < 2 * 1024 * 1024
    assert {"G", "E", "model_config"} <= torch.load(path, weights_only=True).keys()
    G, E, state = sample_script.load_pretrained(torch.device("cpu"))
    assert state["model_config"]["channels"] == 1
    images = sample_script.sample(G, 4, rng=torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, G.cfg.image_size, G.cfg.image_size) and torch.isfinite(images).all()
    x = sample_script.held_out("mnist", "", G.cfg.image_size, 8, seed=0)
    rec = sample_script.reconstruct(G, E, x)
    assert rec.shape == x.shape and torch.isfinite(rec).all()


def test_marked_copies_in_this_folder_match_their_sources():
    root = HERE.parent
    problems = [p for p in copies.check(root) if p.startswith("BiGAN/")]
    assert problems == []
    marked = {(c.source, c.name) for c in copies.marked_copies(HERE)}
    assert {("DCGAN/train.py", "CollapseWatch"), ("DCGAN/train.py", "n_params")} <= marked
