"""experiments/anchor.py: the anchor's main.py is taken as published plus only a wall-clock stop and a save."""
import gzip

import pytest

import anchor

FAKE_MAIN = '''import torch
model = torch.nn.Linear(1, 1)
if __name__ == "__main__":
    for epoch in range(1, args.epochs + 1):
        train(epoch)
'''


def test_prepare_adds_only_the_stop_and_the_save_and_lays_out_the_data(tmp_path, monkeypatch):
    repo = tmp_path / "examples"
    (repo / "vae").mkdir(parents=True)
    (repo / "vae" / "main.py").write_text(FAKE_MAIN)
    monkeypatch.setattr(anchor, "WORK", tmp_path / "work")
    folder = anchor.prepare(repo, minutes=2)
    patched = (folder / "main.py").read_text()
    assert patched.startswith("import torch\nmodel = torch.nn.Linear(1, 1)\n")  # the published lines, unchanged
    assert "_anchor_time.time() + 120" in patched and "break" in patched
    assert patched.rstrip().endswith('torch.save(model.state_dict(), "vae_state.pt")  # added by VAE/experiments/anchor.py')
    assert "        train(epoch)\n" in patched
    raw = tmp_path / "work" / "data" / "MNIST" / "raw"
    images = (raw / "train-images-idx3-ubyte").read_bytes()
    assert images == gzip.decompress((anchor.EMBEDDED / "train-images-idx3-ubyte.gz").read_bytes())
    assert (folder / "results").is_dir()


def test_prepare_refuses_a_main_py_whose_loop_moved(tmp_path, monkeypatch):
    repo = tmp_path / "examples"
    (repo / "vae").mkdir(parents=True)
    (repo / "vae" / "main.py").write_text(FAKE_MAIN.replace("range(1, args.epochs + 1)", "range(args.epochs)"))
    monkeypatch.setattr(anchor, "WORK", tmp_path / "work")
    with pytest.raises(SystemExit, match="changed upstream"):
        anchor.prepare(repo, minutes=1)
