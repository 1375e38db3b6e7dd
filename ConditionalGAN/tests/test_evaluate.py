"""evaluate.py on a tiny checkpoint: the harness records the GAN metrics and the per-class accuracy."""
import functools
import json
import math

import evaluate
import train
from shared import evaluation, features


def test_evaluate_writes_a_record_with_gan_and_class_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    # smaller reference sets than the protocol's 10,000 images: this tests evaluate.py, not the harness
    real_accuracy = features.accuracy
    monkeypatch.setattr(features, "accuracy", lambda net, data: real_accuracy(net, evaluation.subset(data, 300, 0)))
    monkeypatch.setattr(evaluation, "evaluate", functools.partial(evaluation.evaluate, memorisation_reference=300))
    run = train.main(train.TrainConfig(dataset="shapes", image_size=16, batch_size=8, z_dim=8, g_width=8,
                                       d_width=8, threads=1, precision="fp32", steps=2, out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=60))
    for key in ("fid", "fid_floor", "kid", "is", "sample_images_per_s", "train_images_per_s"):
        assert math.isfinite(record[key]) and record[key] >= 0, (key, record[key])
    for key in ("precision", "recall", "memorised_fraction", "class_accuracy"):
        assert 0 <= record[key] <= 1, (key, record[key])
    assert record["params"] == sum(p.numel() for p in evaluate.load_generator(str(run), "cpu")[0].parameters())
    assert record["fid"] > record["fid_floor"]  # an untrained G is further from the data than real images are
    assert record["extractor"].startswith("classifier:shapes")
    per_class = record["class_accuracy_per_class"]
    assert len(per_class) == 3 and not any(math.isnan(a) for a in per_class)  # every shape class was requested
    assert abs(sum(per_class) / 3 - record["class_accuracy"]) < 1e-9  # 60 samples: 20 per class
    assert "bits_per_dim" not in record and "mse" not in record
    assert "square" in capsys.readouterr().out  # the per-class table names the classes
    assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["class_accuracy"] == record["class_accuracy"]
