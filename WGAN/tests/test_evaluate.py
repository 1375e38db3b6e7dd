"""evaluate.py on a tiny WGAN checkpoint: the harness runs and records the GAN's metrics (and only those)."""
import functools
import json
import math

import pytest

import evaluate
import train
from shared import evaluation, features


def test_evaluate_writes_a_record_with_gan_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    score = features.accuracy  # on 500 of the 10,000 test digits, and near-copies searched among 500 training images
    monkeypatch.setattr(features, "accuracy", lambda net, data: score(net, evaluation.subset(data, 500, seed=0)))
    monkeypatch.setattr(evaluation, "evaluate", functools.partial(evaluation.evaluate, memorisation_reference=500))
    run = train.main(train.TrainConfig(dataset="mnist", image_size=16, batch_size=8, z_dim=8, g_width=8, d_width=8,
                                       threads=1, precision="fp32", steps=2, log_every=1, out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=60))
    assert record["fid"] > record["fid_floor"] >= 0  # an untrained G is further from the data than real images are
    assert record["kid"] > record["kid_floor"] and math.isfinite(record["kid"])
    for key in ("precision", "recall", "memorised_fraction"):
        assert 0 <= record[key] <= 1, key
    assert 1 <= record["is"] <= 10  # the classifier IS of ten digit classes lies in [1, 10]
    assert record["sample_images_per_s"] > 0 and record["train_images_per_s"] > 0
    assert record["params"] == sum(p.numel() for p in evaluate.load_generator(str(run), "cpu")[0].parameters())
    assert "bits_per_dim" not in record and "mse" not in record  # a GAN has neither
    assert record["extractor"].startswith("classifier:mnist")
    assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["fid"] == pytest.approx(record["fid"])


def test_evaluate_cli_defaults_to_the_wgan_run_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluation.cli_main(evaluate.EvalConfig, evaluate.main, ["--checkpoint", str(tmp_path / "none")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "none") in lines[0], lines
    assert evaluate.EvalConfig().checkpoint == "runs/wgan"
