"""The embedded MNIST, image-loading faults, CLI and checkpoint faults, progress.gif, W&B, the precision probe,
benchmark helpers and the marked-copies check."""
import gzip
import importlib.util
import os
import stat
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared import checkpoint, cli, copies, data, dist as distributed
from shared.bench import cpu_line, matmul_peak
from shared.run import RunLog, write_progress_gif

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- embedded MNIST

def test_embedded_mnist_is_real_balanced_and_offline(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # no torchvision needed (import would fail)
    train = data.load_dataset("mnist", None, 32, "train")
    test = data.load_dataset("mnist", None, 28, "test")
    assert train.images.shape == (5000, 1, 32, 32) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [500] * 10
    assert torch.bincount(test.labels, minlength=10).min() > 800  # the official test set's class counts
    assert train.classes[3] == "3 - three" and "embedded" in train.source and "5,000" in train.source
    # real digits: mostly black background, bright strokes, and the mean image of a class is not uniform
    assert 0.1 < (test.images > 128).float().mean() < 0.25
    assert (test.images[test.labels == 1].float().mean(0) - test.images[test.labels == 0].float().mean(0)).abs().max() > 100


def test_embedded_mnist_is_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["shared"]
    files = sorted(p.name for p in (ROOT / "shared" / "mnist").iterdir())
    assert "mnist/*.gz" in patterns and "mnist/README.md" in patterns
    assert files == ["README.md", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                     "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    readme = (ROOT / "shared" / "mnist" / "README.md").read_text()
    assert "LeCun" in readme and "Cortes" in readme and "Burges" in readme and "CC BY-SA 3.0" in readme


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_data_root_with_torchvision_files_is_used_instead_of_the_embedded_copy(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 30), ("t10k", 20)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.full((n, 28, 28), 7))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    loaded = data.load_dataset("mnist", str(tmp_path), 32, "train")
    assert len(loaded) == 30 and "torchvision" in loaded.source and str(tmp_path) in loaded.source


def test_read_idx_refuses_truncated_files(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 5)
    with pytest.raises(data.DataError, match="truncated"):
        data.read_idx(path)


# ----------------------------------------------------------------------------- folder: image faults

def test_16_bit_grey_png_is_scaled_and_counts_as_grey(tmp_path):
    values = np.array([[0, 65535], [32768, 65535]], dtype=np.uint16).repeat(8, 0).repeat(8, 1)
    Image.fromarray(values).save(tmp_path / "deep.png")  # mode I;16
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    loaded = data.load_dataset(f"folder:{tmp_path}", None, 16)
    assert loaded.channels == 1
    img = loaded.images[0, 0]
    assert img[0, 0] == 0 and img[0, 15] == 255 and 120 < img[15, 0] < 135  # not clipped to 255 everywhere


def test_transparent_pixels_are_composited_onto_white_not_their_hidden_colour(tmp_path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # hidden red everywhere
    rgba[:8, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = data.load_dataset(f"folder:{tmp_path}", None, 16).images[0]
    assert img[:, 2, 2].tolist() == [255, 0, 0]
    assert img[:, 13, 8].tolist() == list(data.ALPHA_BACKGROUND)


def test_tiny_images_warn_once_with_a_count_and_skipped_files_are_named(tmp_path, capsys):
    for i in range(3):
        Image.new("RGB", (3, 5), (i * 40, 0, 0)).save(tmp_path / f"tiny{i}.png")
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    for name in ("bad1.png", "bad2.jpg"):
        (tmp_path / name).write_bytes(b"not an image")
    loaded = data.load_dataset(f"folder:{tmp_path}", None, 32)
    err = capsys.readouterr().err
    assert len(loaded) == 4
    assert "3 of 4 images" in err and "upscaled more than 2x" in err and err.count("upscaled") == 1
    assert "skipped 2 unreadable" in err and "bad1.png" in err and "bad2.jpg" in err


# ----------------------------------------------------------------------------- CLI faults

@dataclass
class Toy(cli.RunConfig):
    n_critic: int = 5  # critic updates per G update
    variant: str = "gp"  # gp | clip


def test_abbreviated_flags_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse(Toy, ["--n-crit", "2"])
    assert e.value.code == 2 and "--n-crit" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_floats_are_refused(value, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse(Toy, [f"--lr={value}"])
    assert e.value.code == 2 and "finite" in capsys.readouterr().err


def test_defaults_replace_only_the_fields_the_user_did_not_give():
    def variant_defaults(cfg, given):
        table = {"n_critic": {"gp": 1, "clip": 5}[cfg.variant], "lr": {"gp": 3e-4, "clip": 5e-5}[cfg.variant]}
        return Toy(**{**vars(cfg), **{k: v for k, v in table.items() if k not in given}})

    cfg = cli.parse(Toy, ["--variant", "clip", "--n-critic=2"], defaults=variant_defaults)
    assert (cfg.n_critic, cfg.lr) == (2, 5e-5)
    cfg = cli.parse(Toy, ["--lr", "1e-4"], defaults=variant_defaults)
    assert (cfg.n_critic, cfg.lr) == (1, 1e-4)
    assert cli.given_fields(Toy, ["--lr", "1", "--no-download", "--out=x"]) == {"lr", "download", "out"}


def test_out_that_is_a_file_or_under_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(SystemExit) as e:
            cli.parse(Toy, ["--out", str(out)])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--out" in err[0]
    cli.check_out_dir(str(tmp_path / "new" / "deeper"))  # creatable: fine


def test_wandb_without_the_package_exits_2_saying_how_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SystemExit) as e:
        cli.parse(Toy, ["--wandb"])
    assert e.value.code == 2 and "pip install wandb" in capsys.readouterr().err


# ----------------------------------------------------------------------------- checkpoint faults

class WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this would create self.path
        return (open, (self.path, "w"))


def test_a_pickle_that_would_run_code_is_refused_as_such_and_never_runs(tmp_path):
    target = tmp_path / "created_by_unpickling"
    torch.save({"model": "Toy", "step": 1, "x": WritesAFile(str(target))}, tmp_path / "evil.pt")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(tmp_path / "evil.pt", "Toy")
    message = str(e.value)
    assert "not allowed" in message and "open" in message and "corrupt" not in message
    assert not target.exists()


def test_random_bytes_are_called_corrupt(tmp_path):
    (tmp_path / "junk.pt").write_bytes(os.urandom(300))
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated"):
        checkpoint.load(tmp_path / "junk.pt", "Toy")


def test_missing_or_misfit_weights_are_one_line(tmp_path):
    net = torch.nn.Linear(3, 2)
    with pytest.raises(checkpoint.CheckpointError, match="no weights for 'G'"):
        checkpoint.load_weights(net, {"model": "Toy", "D": {}}, "G", "run.pt")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_weights(net, {"G": torch.nn.Linear(4, 2).state_dict()}, "G", "run.pt")
    assert "do not fit" in str(e.value) and "\n" not in str(e.value)


def test_checkpoints_get_the_users_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = checkpoint.save(tmp_path / "c.pt", {"model": "Toy", "step": 0})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_pretrained_weights_round_trip_in_fp16(tmp_path):
    net = torch.nn.Linear(8, 4)
    path = checkpoint.save_pretrained(tmp_path / "g.pt", "Toy", {"width": 8}, {"G": net.state_dict()}, "test run")
    raw = torch.load(path, weights_only=True)
    assert raw["G"]["weight"].dtype == torch.float16 and raw["source"] == "test run"
    loaded = checkpoint.load_pretrained(path, "Toy")
    assert loaded["G"]["weight"].dtype == torch.float32 and loaded["model_config"] == {"width": 8}
    assert torch.allclose(loaded["G"]["weight"], net.weight, atol=1e-3)


# ----------------------------------------------------------------------------- progress.gif and W&B

def test_progress_gif_holds_the_grids_in_order_capped_and_small(tmp_path):
    log = RunLog(tmp_path, 100)
    for step in range(1, 51):
        log.images(step, torch.full((64, 1, 32, 32), -1 + step / 25.0))  # brightness grows with the step
    log.close()
    gif = Image.open(tmp_path / "progress.gif")
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("L"))[5, 5].item())
    assert gif.n_frames == 30  # capped at GIF_FRAMES, first and last kept
    assert frames == sorted(frames) and frames[0] < 30 and frames[-1] > 225
    assert (tmp_path / "progress.gif").stat().st_size < 400_000
    assert write_progress_gif(tmp_path / "nothing", tmp_path / "x.gif") is None


def test_wandb_offline_writes_a_local_run_with_the_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is in the [test] extra")
    import time

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = RunLog(tmp_path / "run", 3, wandb_project="test-project", config={"lr": 0.1})
    assert log.wandb.offline and log.wandb.name == "run" and log.wandb.config["lr"] == 0.1
    log.step(1, {"loss_probe": 0.5}, 4, True)
    log.images(1, torch.zeros(4, 1, 8, 8))
    log.step(2, {"loss_probe": 0.25}, 4, True)
    log.close()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))  # what `wandb sync` uploads later
    assert len(runs) == 1
    deadline, records = time.time() + 60, b""
    while b"0.25" not in records and time.time() < deadline:  # wandb's service process writes after finish()
        time.sleep(0.5)
        records = b"".join(f.read_bytes() for f in runs[0].glob("run-*.wandb"))
    assert records.count(b"loss_probe") >= 2 and b"images_per_s" in records and b"0.25" in records


# ----------------------------------------------------------------------------- precision and benchmarks

def test_precision_auto_follows_the_measured_probe_and_caches_it(tmp_path):
    calls = []

    def probe(speedup):
        return lambda: calls.append(speedup) or speedup

    cache = tmp_path / "precision.json"
    assert distributed.cpu_bf16_is_faster(cache, probe(0.2)) is False
    assert distributed.cpu_bf16_is_faster(cache, probe(5.0)) is False  # cached verdict, no second probe
    assert calls == [0.2]
    cache.unlink()
    assert distributed.cpu_bf16_is_faster(cache, probe(1.7)) is True
    assert "bf16_speedup" in cache.read_text()


def test_the_probe_is_quick_and_gives_a_positive_ratio():
    import time

    start = time.perf_counter()
    ratio = distributed.probe_bf16_speedup()
    assert ratio > 0 and time.perf_counter() - start < 10  # budget: well under a second alone


def test_cpu_line_and_peak():
    line = cpu_line(1)
    assert line.startswith("CPU: ") and distributed.cpu_model() in line and "1 threads" in line
    assert matmul_peak(torch.float32, n=256, repeats=2, seconds=0.05) > 1e8


# ----------------------------------------------------------------------------- marked copies

def make_repo(tmp_path, copy_body: str, mark: str = "# Copied from A/model.py: helper") -> Path:
    (tmp_path / "A").mkdir(parents=True)
    (tmp_path / "B").mkdir()
    (tmp_path / "A" / "model.py").write_text("def helper(x):\n    return x + 1\n")
    (tmp_path / "B" / "model.py").write_text(f"import os\n\n\n{mark}\n{copy_body}")
    return tmp_path


def test_identical_marked_copy_passes_and_drift_fails(tmp_path):
    assert copies.check(make_repo(tmp_path / "ok", "def helper(x):\n    return x + 1\n")) == []
    problems = copies.check(make_repo(tmp_path / "drift", "def helper(x):\n    return x + 2\n"))
    assert len(problems) == 1 and "B/model.py:4" in problems[0] and "differs" in problems[0]


def test_replacements_and_missing_sources(tmp_path):
    renamed = make_repo(tmp_path / "r", "def helper(y):\n    return y + 1\n",
                        "# Copied from A/model.py: helper with x->y")
    assert copies.check(renamed) == []
    gone = make_repo(tmp_path / "g", "def helper(x):\n    return x + 1\n", "# Copied from A/model.py: nothing")
    assert "has no nothing" in copies.check(gone)[0]
    assert copies.parse_replacements("D(G(z))->D(G(z), z); README->BiGAN README") == [
        ("D(G(z))", "D(G(z), z)"), ("README", "BiGAN README")]


def test_every_marked_copy_in_the_project_matches_its_source():
    assert copies.check(ROOT) == []
