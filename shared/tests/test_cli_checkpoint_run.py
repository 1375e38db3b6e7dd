"""The CLI helper, checkpoints and the run log."""
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from shared import checkpoint, cli
from shared.run import RunLog, save_config


@dataclass
class ToyConfig(cli.RunConfig):
    """A model's config: core flags plus its own."""
    width: int = 16  # channels of the toy network
    use_ema: bool = False  # keep an EMA copy


def test_flags_defaults_and_help_from_comments(capsys):
    cfg = cli.parse(ToyConfig, ["--batch-size", "3", "--width", "7", "--use-ema", "--data-root", "/d"])
    assert (cfg.batch_size, cfg.width, cfg.use_ema, cfg.data_root, cfg.dataset) == (3, 7, True, "/d", "mnist")
    with pytest.raises(SystemExit) as e:
        cli.parse(ToyConfig, ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ["--dataset", "--data-root", "--image-size", "--batch-size", "--lr", "--steps", "--minutes",
                 "--seed", "--out", "--resume", "--device", "--precision", "--threads", "--sample-every",
                 "--ckpt-every", "--width"]:
        assert flag in out
    assert "channels of the toy network" in out  # help text is the field's comment


@pytest.mark.parametrize("argv,needle", [
    (["--image-size", "-32"], "--image-size must be positive"),
    (["--batch-size", "0"], "--batch-size"),
    (["--dataset", "celeba"], "celeba"),
    (["--lr", "-1"], "--lr"),
    (["--device", "tpu"], "--device"),
    (["--width", "x"], "--width"),
    (["--no-such-flag"], "--no-such-flag"),
])
def test_bad_values_exit_2_with_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse(ToyConfig, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_model_check_runs_after_core_checks(capsys):
    def check(cfg):
        if cfg.width % 2:
            raise ValueError("--width must be even")
    with pytest.raises(SystemExit):
        cli.parse(ToyConfig, ["--width", "3"], check=check)
    assert "--width must be even" in capsys.readouterr().err
    assert cli.parse(ToyConfig, ["--width", "4"], check=check).width == 4


def test_checkpoint_roundtrip_is_weights_only_and_atomic(tmp_path):
    state = {"model": "Toy", "step": 7, "w": torch.arange(5.0), "config": {"out": "x", "lr": 0.1}}
    path = checkpoint.save_run_checkpoint(tmp_path, state, periodic=True)
    assert path == tmp_path / "checkpoints" / "latest.pt"
    assert (tmp_path / "checkpoints" / "step_0000007.pt").is_file()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # the temp file was renamed, not left
    loaded = checkpoint.load(tmp_path, "Toy")  # a run folder means its latest checkpoint
    assert loaded["step"] == 7 and torch.equal(loaded["w"], state["w"])
    assert checkpoint.latest(tmp_path / "nothing") is None


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    checkpoint.save(tmp_path / "c.pt", {"model": "Toy", "step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        checkpoint.save(tmp_path / "c.pt", {"model": "Toy", "step": 2, "bad": Unpicklable()})
    assert checkpoint.load(tmp_path / "c.pt", "Toy")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_bad_checkpoints_give_clear_errors(tmp_path):
    good = checkpoint.save(tmp_path / "good.pt", {"model": "Toy", "step": 1, "w": torch.randn(1000)})
    (tmp_path / "trunc.pt").write_bytes(good.read_bytes()[:300])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint" * 10)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    for name, match in [("trunc.pt", "corrupt or truncated"), ("junk.pt", "corrupt or truncated"),
                        ("foreign.pt", "not a checkpoint of this project"), ("missing.pt", "not found")]:
        with pytest.raises(checkpoint.CheckpointError, match=match):
            checkpoint.load(tmp_path / name, "Toy")
    with pytest.raises(checkpoint.CheckpointError, match="is a Toy checkpoint, not VAE"):
        checkpoint.load(good, "VAE")
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in run folder"):
        checkpoint.load(tmp_path, "Toy")


def test_rng_state_roundtrip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1); random.seed(2); np.random.seed(3)
    np.random.randn()  # leave a cached gaussian / non-zero position behind
    checkpoint.save(tmp_path / "r.pt", {"model": "Toy", "step": 0, "rng": checkpoint.rng_state()})
    expected = (torch.rand(3), random.random(), np.random.randn(3))
    torch.manual_seed(9); random.seed(9); np.random.seed(9)
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "r.pt", "Toy")["rng"])
    got = (torch.rand(3), random.random(), np.random.randn(3))
    assert torch.equal(expected[0], got[0]) and expected[1] == got[1] and np.array_equal(expected[2], got[2])


def test_run_log_writes_jsonl_tensorboard_and_pngs(tmp_path):
    save_config(tmp_path, {"lr": 0.1, "dataset": "shapes"})
    log = RunLog(tmp_path, total_steps=3)
    for step in (1, 2, 3):
        log.step(step, {"loss": 1.0 / step}, images_per_step=8, write=step != 2)
    path = log.images(3, torch.rand(4, 3, 8, 8) * 2 - 1)
    log.close()
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 3] and records[1]["loss"] == pytest.approx(1 / 3)
    assert records[1]["images_per_s"] > 0
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 0.1
    assert path == tmp_path / "samples" / "step_0000003.png" and path.stat().st_size > 0
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_disabled_run_log_writes_nothing(tmp_path):
    log = RunLog(tmp_path / "rank1", total_steps=3, enabled=False)
    log.step(1, {"loss": 1.0}, images_per_step=8, write=True)
    assert log.images(1, torch.zeros(1, 3, 4, 4)) is None
    log.close()
    assert not (tmp_path / "rank1").exists()


def test_progress_bar_leaves_per_dimension_metrics_to_the_files(tmp_path):
    log = RunLog(tmp_path, total_steps=2)
    log.step(1, {"loss": 1.5, "kl_dim/00": 0.25, "kl_dim/01": 0.5}, images_per_step=4, write=True)
    postfix = log.bar.postfix
    log.close()
    assert "loss" in postfix and "kl_dim" not in postfix
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["kl_dim/01"] == 0.5
