"""evaluate.py on a tiny checkpoint: the harness records the probes and the reconstruction error, with the random-init
twin, raw pixels and a mean fill beside them."""
import functools
import json
import math

import torch

import evaluate
import train
from model import Config, MaskedAutoencoder
from shared import checkpoint, evaluation, features


def test_evaluate_records_probes_baselines_and_masked_reconstruction_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    score = features.accuracy
    monkeypatch.setattr(features, "accuracy", lambda net, data: score(net, evaluation.subset(data, 300, seed=0)))
    run = train.main(train.TrainConfig(dataset="mnist", image_size=16, batch_size=8, dim=16, depth=1, heads=2,
                                       decoder_dim=8, decoder_depth=1, decoder_heads=2, minutes=0, threads=1,
                                       precision="fp32", steps=2, out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=60))
    assert record["dataset"] == "mnist" and record["features"] == "tokens" and "fid" not in record
    for key in ("linear_probe", "knn", "linear_probe_random_init", "knn_random_init", "linear_probe_pixels",
                "knn_pixels"):
        assert 0 <= record[key] <= 1, key
    # the harness's mse is over whole images with the visible patches pasted: (hidden share) x (hidden-patch MSE)
    hidden = 1 - int(16 * 0.25) / 16
    assert 0.5 * hidden * record["mse_masked"] < record["mse"] < 1.5 * hidden * record["mse_masked"]
    for key in ("mse_masked", "mse_masked_mean_fill", "mse_masked_r0.50", "mse_masked_r0.90"):
        assert 0 < record[key] <= 4, key
    assert math.isfinite(record["psnr"])
    mcfg = Config(**checkpoint.load(run, "MaskedAE")["model_config"])
    assert record["params"] == sum(p.numel() for p in MaskedAutoencoder(mcfg).parameters())
    lines = (run / "eval.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == json.loads(json.dumps(record))


def test_the_random_init_twin_is_the_model_train_py_started_from(tmp_path):
    cfg = train.TrainConfig(image_size=16, batch_size=8, dim=16, depth=1, heads=2, decoder_dim=8, decoder_depth=1,
                            decoder_heads=2, minutes=0, threads=1, precision="fp32", steps=1, seed=3,
                            warmup_steps=1, out=str(tmp_path / "run"))
    state = checkpoint.load(train.main(cfg), "MaskedAE")
    mcfg = Config(**state["model_config"])
    twin, again = train.build(mcfg, seed=3), train.build(mcfg, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), again.state_dict().values()))
    trained = MaskedAutoencoder(mcfg)
    trained.load_state_dict(state["mae"])
    # one AdamW step moves each weight by about lr: the twin is the starting point, not the trained model
    delta = (trained.encoder.patch_embed.weight - twin.encoder.patch_embed.weight).abs()
    assert 0 < delta.max() < 10 * cfg.lr


def test_masked_mse_of_a_perfect_reconstruction_is_zero_and_the_mean_fill_is_not(monkeypatch):
    model = MaskedAutoencoder(Config(image_size=16, dim=16, depth=1, heads=2, decoder_dim=8, decoder_depth=1,
                                     decoder_heads=2)).eval()
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    monkeypatch.setattr(evaluate, "reconstruct", lambda m, xb, mb: (x[: len(xb)], x[: len(xb)]))
    mse, fill = evaluate.masked_mse(model, x, 0.75, seed=0)
    assert mse == 0 and fill > 0.1
