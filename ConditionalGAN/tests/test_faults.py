"""Runs under faults and at the edges: signals (one process and one torchrun rank), non-finite losses, a folder
of five images, the embedded MNIST, and sample.py --pretrained."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import sample as sample_script
import train
from model import Config, Discriminator, Generator
from shared import checkpoint, pretrained, training

HERE = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "shapes", "--image-size", "16", "--batch-size", "8", "--z-dim", "8", "--g-width", "8",
        "--d-width", "8", "--threads", "1", "--precision", "fp32", "--log-every", "1", "--sample-every", "2",
        "--grid-columns", "4"]


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(dataset="shapes", image_size=16, batch_size=8, z_dim=8, g_width=8, d_width=8, threads=1,
                precision="fp32", log_every=1, sample_every=2, grid_columns=4, steps=steps, out=str(out),
                ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def strict_json(line: str) -> dict:
    """json.loads that refuses NaN / Infinity (not JSON)."""
    return json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def assert_good_checkpoint(run: Path) -> dict:
    """The latest checkpoint loads, holds only finite tensors, and its replicas match its saved weights."""
    state = checkpoint.load(run, "ConditionalGAN")
    assert 0 < state["step"] and training.non_finite_entries({k: state[k] for k in ("G", "D")}) == []
    cfg = Config(**state["model_config"])
    for name, net in (("G", Generator(cfg)), ("D", Discriminator(cfg))):
        net.load_state_dict(state[name])
        assert all(r[name] == training.parameters_digest(net) for r in state["replicas"]), name
    return state


def popen(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def wait_for_steps(proc: subprocess.Popen, out: Path, steps: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    path = out / "metrics.jsonl"
    while not path.exists() or len(path.read_text().splitlines()) < steps:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"no {steps} logged steps: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below pid (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def worker_of_rank(torchrun_pid: int, rank: int, timeout: float = 60) -> int:
    """The PID of the torchrun worker whose environment holds RANK=rank."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid in descendants(torchrun_pid):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
                return pid
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank} under torchrun {torchrun_pid}")


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = popen("train.py", *TINY, "--steps", "100000", "--out", str(out))
    wait_for_steps(proc, out, 3)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    state = assert_good_checkpoint(out)
    assert state["step"] < 100000 and state["classes"] == ["square", "circle", "triangle"]
    assert "--resume auto" in stdout + stderr and "stopped" in stdout + stderr


def test_sigterm_to_one_torchrun_rank_stops_both_with_identical_replicas(tmp_path):
    """AC-GAN with --ema under DDP (D returns logit and class logits; both heads' gradients are all-reduced).
    SIGTERM reaches rank 1 only: rank 0 learns it at the next step, both checkpoint and exit, and the saved
    ranks' parameter digests are equal and are those of the saved weights."""
    out = tmp_path / "ddp"
    proc = popen("-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "train.py",
                 *TINY, "--steps", "100000", "--conditioning", "acgan", "--ema", "0.9", "--out", str(out))
    try:
        wait_for_steps(proc, out, 3)
        os.kill(worker_of_rank(proc.pid, 1), signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0  # pre-empted, not finished (torchrun reports the workers' exit 143)
    assert "terminate called" not in stderr
    state = assert_good_checkpoint(out)
    # only rank 0 logs: it stopped at the agreed step because of rank 1's signal (rank 1 can only exit after
    # rank 0 reached the final barrier, so torchrun's own SIGTERM to the survivors comes too late to be the cause)
    assert f"stopped at step {state['step']} (signal SIGTERM)" in stdout and "--resume auto" in stdout
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["config"]["conditioning"] == "acgan"
    assert state["replicas"][0] == state["replicas"][1] and set(state["replicas"][0]) == {"G", "D", "G_ema"}
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank its own noise
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, state["step"] + 1))  # rank 0 logged every step up to the agreed stop


def nan_on_calls(monkeypatch, calls: set[int] | None, name: str = "discriminator_loss") -> list[int]:
    """Make train's loss function `name` return nan on the given calls (1-based; None = every call)."""
    real, count = getattr(train, name), [0]

    def loss(*args, **kwargs):
        count[0] += 1
        value, terms = real(*args, **kwargs)
        return (value * float("nan"), terms) if calls is None or count[0] in calls else (value, terms)

    monkeypatch.setattr(train, name, loss)
    return count


def parameters(state: dict) -> dict:
    """A network's trainable entries (spectral norm's power-iteration vectors _u/_v move on every forward)."""
    return {k: v for k, v in state.items() if not k.endswith(("_u", "_v"))}


def test_a_nan_loss_skips_that_update_and_the_log_stays_json(tmp_path, monkeypatch, capsys):
    nan_on_calls(monkeypatch, {2})
    run = train.main(tiny_config(tmp_path / "nan", steps=3, ckpt_every=1))
    s1, s2, s3 = (checkpoint.load(run / "checkpoints" / f"step_{i:07d}.pt", "ConditionalGAN") for i in (1, 2, 3))
    d1, d2, d3 = (parameters(s["D"]) for s in (s1, s2, s3))
    assert all(torch.equal(d1[k], d2[k]) for k in d1)  # step 2's D update was skipped
    assert not all(torch.equal(d2[k], d3[k]) for k in d2)  # step 3's was not
    assert not torch.equal(s1["G"]["to_image.weight"], s2["G"]["to_image.weight"])  # G's step 2 went ahead
    assert int(s3["opt_d"]["state"][0]["step"]) == 2 and int(s3["opt_g"]["state"][0]["step"]) == 3
    records = [strict_json(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[1]["step"] == 2 and records[1]["loss_d"] is None and records[2]["loss_d"] > 0
    out = capsys.readouterr().out
    assert "step 2: non-finite loss_d; update skipped" in out


def test_nan_every_step_stops_with_exit_3_and_no_bad_checkpoint(tmp_path, monkeypatch, capsys):
    """D's loss nan at every step while G's stays finite: D's 5th skipped update in a row stops the run."""
    count = nan_on_calls(monkeypatch, None)
    out = tmp_path / "diverged"
    with pytest.raises(SystemExit) as exit_info:
        training.run_main(train.main, tiny_config(out, steps=50, ckpt_every=1))
    assert exit_info.value.code == training.EXIT_DIVERGED and count[0] == 5
    errors = [l for l in capsys.readouterr().err.splitlines() if "error:" in l]  # stderr also has the progress bar
    assert len(errors) == 1 and "training diverged: 5 non-finite losses in a row" in errors[0], errors
    written = sorted((out / "checkpoints").glob("*.pt"))
    assert [p.name for p in written] == ["latest.pt"] + [f"step_{i:07d}.pt" for i in range(1, 5)]
    for path in written:
        state = checkpoint.load(path, "ConditionalGAN")
        assert training.non_finite_entries({k: state[k] for k in ("G", "D", "opt_g", "opt_d")}) == []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        strict_json(line)


def test_a_folder_of_five_images_trains_and_samples(tmp_path, capsys):
    """Two classes (subfolders) of 3 and 2 images, --batch-size 4: one batch per epoch, to the end."""
    root = tmp_path / "five"
    for cls, n in (("red", 3), ("blue", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            colour = (200, 20 * i, 0) if cls == "red" else (0, 20 * i, 200)
            Image.new("RGB", (16, 16), colour).save(root / cls / f"{i}.png")
    run = train.main(tiny_config(tmp_path / "run", steps=3, dataset=f"folder:{root}", batch_size=4))
    config = json.loads((run / "config.json").read_text())
    assert config["data_size"] == 5 and config["model_config"]["num_classes"] == 2
    state = assert_good_checkpoint(run)
    assert state["step"] == 3 and state["classes"] == ["blue", "red"] and state["data"]["epoch"] == 2
    printed = capsys.readouterr().out
    assert f"python sample.py --checkpoint {run}" in printed and str(run / "progress.gif") in printed
    out = sample_script.main(sample_script.parse_args(["--checkpoint", str(run), "--num", "2",
                                                       "--out", str(tmp_path / "s")]))
    assert sorted(p.name for p in out.iterdir()) == ["class_0", "class_1", "grid.png"]
    assert Image.open(out / "grid.png").size == (2 + 2 * 18, 2 + 2 * 18)


def test_a_few_steps_on_the_embedded_mnist(tmp_path):
    assert train.TrainConfig().dataset == "mnist"  # the default, with no --data-root
    run = train.main(tiny_config(tmp_path / "mnist", steps=2, dataset="mnist", grid_columns=2))
    config = json.loads((run / "config.json").read_text())
    assert config["data_size"] == 5000 and "embedded MNIST" in config["data_source"]
    assert config["model_config"]["channels"] == 1 and config["model_config"]["num_classes"] == 10
    assert Image.open(run / "samples" / "step_0000002.png").size == (2 + 2 * 18, 2 + 10 * 18)  # a row per digit
    state = assert_good_checkpoint(run)
    assert state["classes"][7].startswith("7")


def check_pretrained(path: Path, out: Path, monkeypatch) -> None:
    """path loads with weights_only, is small, and sample.py --pretrained draws finite images of every class."""
    assert path.stat().st_size < 2e6
    raw = torch.load(path, weights_only=True)
    assert raw["model"] == "ConditionalGAN" and isinstance(raw["G"], dict)
    monkeypatch.setattr(sample_script, "PRETRAINED", path)
    G, _ = sample_script.load_pretrained(torch.device("cpu"))
    cfg = G.cfg
    labels = torch.arange(cfg.num_classes)
    images = sample_script.sample(G, labels, rng=torch.Generator().manual_seed(0))
    assert images.shape == (cfg.num_classes, cfg.channels, cfg.image_size, cfg.image_size)
    assert torch.isfinite(images).all() and images.std() > 0
    sample_script.run(["--pretrained", "--num", "2", "--out", str(out)])
    assert len(list(out.glob("class_*"))) == cfg.num_classes
    side = cfg.image_size + 2
    assert Image.open(out / "grid.png").size == (2 + 2 * side, 2 + cfg.num_classes * side)


def test_shipped_pretrained_generator(tmp_path, monkeypatch):
    """Fails until the lead ships pretrained/generator.pt (the default MNIST run's G)."""
    assert sample_script.PRETRAINED == HERE / "pretrained" / "generator.pt"  # next to sample.py, not the cwd
    assert sample_script.PRETRAINED.is_file(), f"{sample_script.PRETRAINED} is not shipped yet"
    monkeypatch.chdir(tmp_path)
    check_pretrained(sample_script.PRETRAINED, tmp_path / "s", monkeypatch)


def test_pretrained_export_of_an_ema_run_samples(tmp_path, monkeypatch):
    """The export the lead runs (shared.pretrained, the moving average as "G") works with sample.py --pretrained."""
    run = train.main(tiny_config(tmp_path / "run", steps=2, ema=0.999))
    path = pretrained.export(str(run), "ConditionalGAN", ["G_ema:G"], str(tmp_path / "generator.pt"))
    monkeypatch.chdir(tmp_path)
    check_pretrained(path, tmp_path / "s", monkeypatch)
    G, _ = sample_script.load_pretrained(torch.device("cpu"), path)
    ema = checkpoint.load(run, "ConditionalGAN")["G_ema"]
    assert torch.equal(G.state_dict()["to_image.weight"], ema["to_image.weight"].half().float())


def test_a_missing_pretrained_file_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "pretrained" / "generator.pt"
    monkeypatch.setattr(sample_script, "PRETRAINED", missing)
    with pytest.raises(SystemExit) as exit_info:
        sample_script.run(["--pretrained", "--out", str(tmp_path / "s")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert str(missing) in lines[0] and "python train.py" in lines[0] and "fetch" in lines[0]
