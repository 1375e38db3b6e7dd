"""evaluate.py on a tiny checkpoint: the harness records sample, reconstruction and representation metrics, and the
untrained-encoder baseline beside them."""
import functools
import json
import math

import torch

import evaluate
import train
from model import Config, Encoder, Generator
from shared import checkpoint, evaluation, features


def test_evaluate_writes_a_record_with_encoder_metrics_and_the_random_init_baseline(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    # test speed only: score the feature classifier on 500 test images and search 500 training images for
    # near-copies (the harness's defaults, 10,000 each, take most of a minute on one thread)
    score = features.accuracy
    monkeypatch.setattr(features, "accuracy", lambda net, data: score(net, evaluation.subset(data, 500, seed=0)))
    monkeypatch.setattr(evaluation, "evaluate", functools.partial(evaluation.evaluate, memorisation_reference=500))
    run = train.main(train.TrainConfig(dataset="shapes", image_size=16, batch_size=8, z_dim=8, g_width=8, e_width=8,
                                       d_width=8, d_joint=16, threads=1, precision="fp32", steps=2,
                                       out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=60))
    assert record["dataset"] == "shapes" and record["extractor"].startswith("classifier:shapes")
    assert math.isfinite(record["fid"]) and record["fid"] > record["fid_floor"] >= 0
    for key in ("precision", "recall", "linear_probe", "knn", "linear_probe_random_init", "knn_random_init",
                "mig", "factor_vae"):
        assert 0 <= record[key] <= 1, key
    for key in ("mse", "mse_random_sample"):  # images in [-1, 1]: a squared error per pixel is at most 4
        assert 0 < record[key] <= 4, key
    assert math.isfinite(record["psnr"]) and record["train_images_per_s"] > 0
    mcfg = Config(**checkpoint.load(run, "BiGAN")["model_config"])
    assert record["params"] == sum(p.numel() for net in (Generator(mcfg), Encoder(mcfg)) for p in net.parameters())
    assert "bits_per_dim" not in record
    lines = (run / "eval.jsonl").read_text().splitlines()
    assert len(lines) == 1, "one record per evaluation, with the baselines in it"
    assert json.loads(lines[-1]) == json.loads(json.dumps(record))


def test_random_init_baseline_is_the_encoder_train_py_started_from(tmp_path):
    """train.build(seed) reproduces the initial E exactly, so the baseline differs from the trained E by training only."""
    cfg = train.TrainConfig(image_size=16, batch_size=8, z_dim=8, g_width=8, e_width=8, d_width=8, d_joint=16,
                            threads=1, precision="fp32", steps=1, seed=3, out=str(tmp_path / "run"))
    run = train.main(cfg)
    state = checkpoint.load(run, "BiGAN")
    _, E0, _ = train.build(Config(**state["model_config"]), seed=3)
    _, E0_again, _ = train.build(Config(**state["model_config"]), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(E0.state_dict().values(), E0_again.state_dict().values()))
    trained = Encoder(Config(**state["model_config"]))
    trained.load_state_dict(state["E"])
    # one Adam step moved every weight by about lr: the baseline is the pre-training point, not the trained one
    delta = (trained.to_code.weight - E0.to_code.weight).abs()
    assert 0 < delta.max() < 10 * cfg.lr
