"""The training script end to end: run folder contents, sample.py, exact resume, signals, torchrun, CLI errors."""
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
from shared import checkpoint, cli

HERE = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "16", "--batch-size", "8", "--z-dim", "8", "--g-width", "8", "--d-width", "8",
        "--threads", "1", "--precision", "fp32", "--log-every", "1", "--sample-every", "2"]


def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(image_size=16, batch_size=8, z_dim=8, g_width=8, d_width=8, threads=1, precision="fp32",
                log_every=1, sample_every=2, steps=steps, out=str(out), ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


def run_script(*args, timeout=240, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=timeout,
                          env=env, **kwargs)


def test_two_steps_write_a_complete_run_folder_that_sample_py_loads(tmp_path):
    run = train.main(tiny_config(tmp_path / "run", steps=2))
    assert json.loads((run / "config.json").read_text())["steps"] == 2
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_g"]])).all() for r in lines)
    assert (run / "samples" / "step_0000002.png").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    state = checkpoint.load(run, model="DCGAN")
    assert state["step"] == 2 and state["model_config"]["image_size"] == 16

    out = tmp_path / "samples"
    sample_script.main(sample_script.SampleConfig(checkpoint=str(run), num=5, out=str(out), interpolations=2))
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(5)]
    assert (out / "grid.png").is_file() and (out / "interpolation.png").is_file()


def test_resume_is_exact(tmp_path):
    """train 4 steps == train 2, stop, resume from the checkpoint, train 2 more."""
    straight = train.main(tiny_config(tmp_path / "a", steps=4))
    train.main(tiny_config(tmp_path / "b", steps=2))
    resumed = train.main(tiny_config(tmp_path / "b", steps=4, resume="auto"))
    a, b = checkpoint.load(straight, "DCGAN"), checkpoint.load(resumed, "DCGAN")
    assert a["step"] == b["step"] == 4
    for net in ("G", "D"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    assert torch.equal(a["opt_g"]["state"][0]["exp_avg"], b["opt_g"]["state"][0]["exp_avg"])
    assert a["data"] == b["data"]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
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
    assert proc.returncode == 0, stderr
    state = checkpoint.load(out, "DCGAN")
    assert 0 < state["step"] < 100000
    assert "--resume auto" in stdout + stderr


def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    res = run_script("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "train.py",
                     *TINY, "--steps", "3", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "terminate called" not in res.stderr
    state = checkpoint.load(out, "DCGAN")
    assert state["step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2
    # each rank drew its own noise: the saved RNG streams differ
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    # rank 0 alone logs: one line per step, not two
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    # DDP kept the replicas identical; the saved G reproduces (loaded in a single process)
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "24"], "power of two"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--steps", "ten"], "--steps"),
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


def test_missing_mnist_message_names_path_and_flag(tmp_path):
    res = run_script("train.py", "--dataset", "mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "x"))
    assert res.returncode == 2
    assert str(tmp_path) in res.stderr and "--data-root" in res.stderr


def test_sample_py_rejects_bad_checkpoints(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    res = run_script("sample.py", "--checkpoint", str(junk), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "corrupt" in res.stderr and "Traceback" not in res.stderr

    run = train.main(tiny_config(tmp_path / "run", steps=1))
    ckpt = run / "checkpoints" / "latest.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated"):
        checkpoint.load(truncated, "DCGAN")
    other = tmp_path / "other.pt"
    checkpoint.save(other, {"model": "VAE", "step": 1})
    res = run_script("sample.py", "--checkpoint", str(other), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "VAE checkpoint, not DCGAN" in res.stderr


def test_collapse_watch_warns_once_when_d_wins_for_the_whole_span():
    watch = train.CollapseWatch(start_step=0, threshold=0.01, span=500)
    healthy = [0.3, 0.02, 0.005, 0.001, 0.2]  # dips below the threshold, but never for 500 steps
    assert all(watch.update(10 * (i + 1), healthy[i % 5]) is None for i in range(200))  # steps 10..2000
    # From step 2010 on D wins: 2000 is the last step at or above the threshold, so the warning comes at 2500.
    warnings = [(step, watch.update(step, 1e-5)) for step in range(2010, 3010, 10)]
    fired = [(step, text) for step, text in warnings if text]
    assert [step for step, _ in fired] == [2500]
    assert "since step 2000" in fired[0][1] and "step_*.pt" in fired[0][1]
    # A recovery re-arms it; a second episode warns again.
    assert watch.update(3010, 0.5) is None
    assert [s for s in range(3020, 3600, 10) if watch.update(s, 1e-6)] == [3510]


def test_collapse_watch_counts_from_the_resumed_step():
    watch = train.CollapseWatch(start_step=8000)
    assert watch.update(8100, 1e-6) is None  # D(G(z)) low from the start, but only 100 steps seen
    assert watch.update(8500, 1e-6) is not None
