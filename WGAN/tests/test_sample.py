"""sample.py: a run's checkpoint, the shipped pretrained generator (--pretrained), and its one-line errors."""
import os

import pytest
import torch
from PIL import Image

import sample as sample_script
import train
from model import Config, Generator, sample
from shared import checkpoint, pretrained


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train.main(train.TrainConfig(image_size=16, batch_size=8, z_dim=8, g_width=8, d_width=8, threads=1,
                                        precision="fp32", steps=2, out=str(out), sample_every=1000))


def test_sample_py_writes_pngs_grid_and_interpolations(tiny_run, tmp_path):
    out = sample_script.main(sample_script.SampleConfig(checkpoint=str(tiny_run), num=5, out=str(tmp_path / "s"),
                                                        interpolations=2))
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(5)]
    with Image.open(out / "interpolation.png") as img:  # 2 rows of 10 images of 16x16 (2-pixel padding)
        assert img.size == (10 * 18 + 2, 2 * 18 + 2)
    with Image.open(out / "grid.png") as img:
        assert img.size == (3 * 18 + 2, 2 * 18 + 2)  # ceil(sqrt(5)) = 3 columns


def test_shipped_pretrained_generator_loads_small_and_samples():
    """Fails until pretrained/generator.pt is shipped (exported from the default MNIST run)."""
    path = sample_script.PRETRAINED
    assert path.is_file(), (f"{path} is missing: python -m shared.pretrained RUN --model WGAN --keys G "
                            f"--out WGAN/pretrained/generator.pt")
    assert path.stat().st_size < 2_000_000
    state = torch.load(path, weights_only=True)
    assert state["model"] == "WGAN" and all(v.dtype == torch.float16 for v in state["G"].values()
                                            if v.is_floating_point())
    G = sample_script.load_pretrained(torch.device("cpu"))
    images = sample(G, 6, rng=torch.Generator().manual_seed(0))
    cfg = G.cfg
    assert images.shape == (6, cfg.channels, cfg.image_size, cfg.image_size) and torch.isfinite(images).all()
    assert images.std() > 0.05  # not a constant image


def test_pretrained_flag_samples_an_exported_run(tiny_run, tmp_path, monkeypatch):
    """The --pretrained code path on a file exported the way the shipped one is (shared.pretrained)."""
    exported = pretrained.export(str(tiny_run), "WGAN", ["G"], str(tmp_path / "generator.pt"))
    monkeypatch.setattr(sample_script, "PRETRAINED", exported)
    assert torch.load(exported, weights_only=True)["G"]["to_image.weight"].dtype == torch.float16
    G = sample_script.load_pretrained(torch.device("cpu"))
    state = checkpoint.load(tiny_run, "WGAN")
    assert G.cfg == Config(**state["model_config"])  # rebuilt from the stored config
    for k, v in G.state_dict().items():
        assert torch.allclose(v.float(), state["G"][k].float(), rtol=1e-3, atol=1e-4), k  # fp16 round trip
    out = sample_script.main(sample_script.SampleConfig(pretrained=True, checkpoint="/nonexistent", num=3,
                                                        out=str(tmp_path / "s"), interpolations=0))
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png", "000002.png", "grid.png"]


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    """sample.py's command line in-process: (exit code, stderr lines)."""
    with pytest.raises(SystemExit) as exit_info:
        sample_script.cli_main(argv)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def test_missing_pretrained_file_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "pretrained" / "generator.pt"
    monkeypatch.setattr(sample_script, "PRETRAINED", missing)
    code, lines = run_cli(["--pretrained", "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and len(lines) == 1
    assert str(missing) in lines[0] and "python train.py" in lines[0] and "fetch" in lines[0]


def test_bad_checkpoints_and_out_exit_2_with_one_line(tiny_run, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    code, lines = run_cli(["--checkpoint", str(junk), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(lines) == 1 and "corrupt" in lines[0]
    other = tmp_path / "other.pt"
    checkpoint.save(other, {"model": "DCGAN", "step": 1})
    code, lines = run_cli(["--checkpoint", str(other), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(lines) == 1 and "DCGAN checkpoint, not WGAN" in lines[0]
    no_g = tmp_path / "no_g.pt"
    checkpoint.save(no_g, {k: v for k, v in checkpoint.load(tiny_run, "WGAN").items() if k != "G"})
    code, lines = run_cli(["--checkpoint", str(no_g), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(lines) == 1 and "no weights for 'G'" in lines[0]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, lines = run_cli(["--checkpoint", str(tiny_run), "--out", str(a_file)], capsys)
    assert code == 2 and len(lines) == 1 and "is a file" in lines[0]

