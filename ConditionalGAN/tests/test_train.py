"""The training script end to end: run folder, sample.py --class, exact resume, changed flags, CLI errors."""
# Adapted from DCGAN/tests/test_train.py: the contract tests (run folder, resume, CLI errors); class-conditional.
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sample as sample_script
import train
from model import sample
from shared import checkpoint, cli, training
from shared.data import to_uint8

def tiny_config(out: Path, steps: int, **overrides) -> train.TrainConfig:
    base = dict(dataset="shapes", image_size=16, batch_size=8, z_dim=8, g_width=8, d_width=8, threads=1,
                precision="fp32", log_every=1, sample_every=2, grid_columns=4, steps=steps, out=str(out),
                ckpt_every=1000)
    return train.TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Four steps of the default (projection, hinge) model on shapes: 3 classes."""
    return train.main(tiny_config(tmp_path_factory.mktemp("run") / "run", steps=4))


def test_four_steps_write_a_complete_run_folder(tiny_run):
    run = tiny_run
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"]["num_classes"] == 3 and config["data_size"] == 50_000  # shapes
    assert config["data_source"].startswith("shapes")
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    for r in lines:  # D's raw logits under their own names, not DCGAN's probabilities d_real / d_fake
        assert "d_real" not in r and "d_fake" not in r
        assert all(np.isfinite(r[k]) for k in ("loss_d", "loss_g", "logit_real", "logit_fake"))
    # the hinge loss is a function of the logged logits' batches; with logits near 0 it is near 2
    assert 1.0 < lines[0]["loss_d"] < 3.0 and abs(lines[0]["logit_real"]) < 1.0
    events = EventAccumulator(str(next(run.glob("events.out.tfevents.*")))).Reload()
    assert {"logit_real", "logit_fake", "loss_d"} <= set(events.Tags()["scalars"])
    assert "samples" in events.Tags()["images"]
    grids = sorted((run / "samples").glob("step_*.png"))
    assert [p.name for p in grids] == ["step_0000002.png", "step_0000004.png"]
    assert Image.open(grids[-1]).size == (2 + 4 * 18, 2 + 3 * 18)  # 3 rows (classes) x 4 columns of 16 px
    with Image.open(run / "progress.gif") as gif:  # progress.gif animates exactly these class grids
        assert gif.n_frames == 2 and gif.size == Image.open(grids[-1]).size
    state = checkpoint.load(run, model="ConditionalGAN")
    assert state["step"] == 4 and state["classes"] == ["square", "circle", "triangle"]
    assert state["G_ema"] is None  # --ema is off by default


def read_pngs(folder: Path) -> torch.Tensor:
    """(N, C, H, W) uint8 from the numbered PNGs in folder."""
    return torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)
                        for p in sorted(folder.glob("*.png"))])


def test_sample_py_class_k_writes_images_of_class_k_only(tiny_run, tmp_path, capsys):
    """The label reaches G: the files are G(z, K) for the seed's z, not G(z, k) of another class."""
    ckpt = checkpoint.load(tiny_run, "ConditionalGAN")
    for name, value in ckpt["G"].items():  # a 4-step G has barely left identity BN: give each class its own bias
        if name.endswith("beta.weight"):
            value.copy_(2.0 * torch.arange(3.0)[:, None].expand_as(value))
    distinct = checkpoint.save(tmp_path / "distinct.pt", ckpt)
    out = tmp_path / "k1"
    sample_script.run(["--checkpoint", str(distinct), "--class", "1", "--num", "5", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["class_1", "grid.png"]
    assert sorted(p.name for p in (out / "class_1").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    written = read_pngs(out / "class_1")
    G, _ = sample_script.load_generator(str(distinct), torch.device("cpu"))
    z = torch.randn(5, G.cfg.z_dim, generator=torch.Generator().manual_seed(0))
    own, other = (to_uint8(sample(G, torch.full((5,), k), z=z)) for k in (1, 2))
    assert (written.int() - own.int()).abs().max() <= 1  # PNG = G(z, 1) up to rounding
    assert (written.int() - other.int()).abs().max() > 10  # and clearly not class 2
    assert "1 (circle)" in capsys.readouterr().out


def test_sample_py_class_list_makes_a_class_by_row_grid(tiny_run, tmp_path):
    out = sample_script.main(sample_script.parse_args(
        ["--checkpoint", str(tiny_run), "--class", "2", "0", "--num", "3", "--out", str(tmp_path / "s")]))
    assert sorted(p.name for p in out.iterdir()) == ["class_0", "class_2", "grid.png"]
    assert len(list((out / "class_0").glob("*.png"))) == 3
    assert Image.open(out / "grid.png").size == (2 + 3 * 18, 2 + 2 * 18)  # 2 rows (classes) x 3 columns
    assert sample_script.parse_args(["--classes", "0,2"]).classes == "0,2"


@pytest.mark.parametrize("args,needle", [(["--class", "3"], "out of range"), (["--class", "x"], "class indices")])
def test_sample_py_rejects_bad_classes(tiny_run, tmp_path, args, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sample_script.run(["--checkpoint", str(tiny_run), *args, "--out", str(tmp_path / "o")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and needle in lines[0], lines


def test_sample_py_refuses_an_out_that_is_a_file(tiny_run, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        sample_script.run(["--checkpoint", str(tiny_run), "--out", str(tmp_path / "f")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "is a file" in lines[0], lines


@pytest.mark.parametrize("conditioning,loss", [("projection", "hinge"), ("acgan", "bce")])
def test_resume_is_exact(tmp_path, conditioning, loss):
    """train 5 steps == train 2, stop, resume, train 3 more, with log_every 3: the runs log at different steps
    (3, 5 against 2, 3, 5), so any RNG draw or BatchNorm / spectral-norm update in logging would show. Includes
    the spectral-norm vectors and G's moving average (--ema)."""
    kw = dict(conditioning=conditioning, loss=loss, ema=0.999, log_every=3)
    straight = train.main(tiny_config(tmp_path / "a", steps=5, **kw))
    train.main(tiny_config(tmp_path / "b", steps=2, **kw))
    resumed = train.main(tiny_config(tmp_path / "b", steps=5, resume="auto", **kw))
    a, b = checkpoint.load(straight, "ConditionalGAN"), checkpoint.load(resumed, "ConditionalGAN")
    assert a["step"] == b["step"] == 5
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    assert not torch.equal(a["G_ema"]["to_image.weight"], a["G"]["to_image.weight"])  # the average was resumed
    assert any("_u" in k for k in a["D"])  # the power-iteration state is part of the checkpoint
    assert torch.equal(a["opt_g"]["state"][0]["exp_avg"], b["opt_g"]["state"][0]["exp_avg"])
    assert a["data"] == b["data"] and a["replicas"] == b["replicas"]
    logged = [{r["step"]: r["loss_d"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
              for run in (straight, resumed)]
    assert sorted(logged[0]) == [3, 5] and sorted(logged[1]) == [2, 3, 5]
    assert logged[0][3] == logged[1][3] and logged[0][5] == logged[1][5]


def test_ema_is_what_samples_use_and_lr_d_is_ds_rate(tmp_path):
    """The checkpoint keeps G's moving average beside G; sample.py/evaluate.py load it unless --raw; --lr-d sets
    D's Adam rate only; --ema 0 keeps no average and then G itself is loaded."""
    run = train.main(tiny_config(tmp_path / "e", steps=3, lr_d=5e-4, ema=0.999))
    state = checkpoint.load(run, "ConditionalGAN")
    assert state["opt_d"]["param_groups"][0]["lr"] == 5e-4 and state["opt_g"]["param_groups"][0]["lr"] == 2e-4
    key = "to_image.weight"
    assert not torch.equal(state["G_ema"][key], state["G"][key])  # an average lags the trained weights
    assert torch.equal(sample_script.load_generator(str(run), torch.device("cpu"))[0].state_dict()[key],
                       state["G_ema"][key])
    assert torch.equal(sample_script.load_generator(str(run), torch.device("cpu"), raw=True)[0].state_dict()[key],
                       state["G"][key])
    assert "G_ema" in state["replicas"][0]  # the average is part of the replicas' digests


def test_d_steps_updates_d_that_many_times_per_g_step(tmp_path):
    """--d-steps k (n_dis): k Adam steps of D, each on its own real batch, per Adam step of G."""
    state = checkpoint.load(train.main(tiny_config(tmp_path / "k", steps=3, d_steps=2)), "ConditionalGAN")
    assert int(state["opt_d"]["state"][0]["step"]) == 6 and int(state["opt_g"]["state"][0]["step"]) == 3
    assert state["data"] == {"epoch": 0, "position": 6}  # six real batches read


def test_resume_with_new_learning_rates_uses_them(tmp_path, capsys):
    """--lr and --lr-d may change on resume: the optimizers and config.json take the new values."""
    train.main(tiny_config(tmp_path / "lr", steps=2))
    capsys.readouterr()
    run = train.main(tiny_config(tmp_path / "lr", steps=3, resume="auto", lr=1e-3, lr_d=8e-4))
    state = checkpoint.load(run, "ConditionalGAN")
    assert state["step"] == 3
    assert state["opt_g"]["param_groups"][0]["lr"] == 1e-3 and state["opt_d"]["param_groups"][0]["lr"] == 8e-4
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 1e-3 and config["lr_d"] == 8e-4
    out = capsys.readouterr().out
    assert "--lr 0.0002 -> 0.001" in out and "--lr-d 0.0004 -> 0.0008" in out


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory):
    return train.main(tiny_config(tmp_path_factory.mktemp("refuse") / "run", steps=1))


@pytest.mark.parametrize("change,needle", [(dict(batch_size=4), "--batch-size"),
                                           (dict(conditioning="acgan"), "--conditioning"),
                                           (dict(g_width=16), "--g-width"), (dict(ema=0.999), "--ema")])
def test_resume_with_other_settings_exits_2_with_one_line(one_step_run, change, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        training.run_main(train.main, tiny_config(one_step_run, steps=2, resume="auto", **change))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and needle in lines[0], lines
    assert checkpoint.load(one_step_run, "ConditionalGAN")["step"] == 1  # the run was left alone


@pytest.mark.parametrize("args,needle", [
    (["--image-size", "24"], "power of two"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--conditioning", "concat"], "--conditioning"),
    (["--loss", "wasserstein"], "--loss"),
    (["--class-weight", "-1"], "--class-weight"),
    (["--ema", "1"], "--ema"),
    (["--lr-d", "-1"], "--lr-d"),
    (["--lr-d", "nan"], "finite"),
    (["--d-steps", "0"], "--d-steps"),
    (["--precision", "fp8"], "--precision"),
    (["--d-step", "2"], "unrecognized"),  # no abbreviated flags
])
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path, capsys):
    """Parse-time errors, in-process (train.py's __main__ runs exactly this parse)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.parse(train.TrainConfig, [*args, "--out", str(tmp_path / "x")], check=train.check)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


def test_missing_data_exits_2_with_one_line_naming_the_path(tmp_path, capsys):
    """A run-time error, through train.py's __main__ (training.run_main): one line naming the path."""
    with pytest.raises(SystemExit) as exit_info:
        training.run_main(train.main, tiny_config(tmp_path / "x", steps=1, dataset="mnist",
                                                  data_root="/nonexistent/data"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "/nonexistent/data" in lines[0], lines


def test_unlabelled_folder_is_refused_with_one_line(tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(images / f"{i}.png")
    with pytest.raises(SystemExit) as exit_info:
        training.run_main(train.main, tiny_config(tmp_path / "x", steps=1, dataset=f"folder:{images}",
                                                  batch_size=2))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "no class labels" in lines[0], lines


def test_sample_py_rejects_foreign_checkpoints(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    other = tmp_path / "other.pt"
    checkpoint.save(other, {"model": "DCGAN", "step": 1})
    for path, needle in ((junk, "corrupt"), (other, "DCGAN checkpoint, not ConditionalGAN")):
        with pytest.raises(SystemExit) as exit_info:
            sample_script.run(["--checkpoint", str(path), "--out", str(tmp_path / "o")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(lines) == 1 and needle in lines[0], lines


def test_sample_py_names_missing_weights_in_one_line(tiny_run, tmp_path, capsys):
    state = checkpoint.load(tiny_run, "ConditionalGAN")
    del state["G"]
    broken = checkpoint.save(tmp_path / "no_g.pt", state)
    with pytest.raises(SystemExit) as exit_info:
        sample_script.run(["--checkpoint", str(broken), "--out", str(tmp_path / "o")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "no weights for 'G'" in lines[0], lines
