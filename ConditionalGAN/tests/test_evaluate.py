"""evaluate.py on a tiny checkpoint: the harness records the GAN metrics and the per-class accuracy."""
import json
import math

import evaluate
import train
from shared import features


def test_evaluate_writes_a_record_with_gan_and_class_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    run = train.main(train.TrainConfig(image_size=16, batch_size=8, z_dim=8, g_width=8, d_width=8, threads=1,
                                       precision="fp32", steps=2, out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=60))
    for key in ("fid", "fid_floor", "kid", "precision", "recall", "is", "memorised_fraction",
                "sample_images_per_s", "train_images_per_s", "params", "class_accuracy"):
        assert record[key] is not None, key
    assert record["fid"] > record["fid_floor"]  # an untrained G is further from the data than real images are
    per_class = record["class_accuracy_per_class"]
    assert len(per_class) == 3 and not any(math.isnan(a) for a in per_class)  # every shape class was requested
    assert abs(sum(per_class) / 3 - record["class_accuracy"]) < 1e-9  # 60 samples: 20 per class
    assert "bits_per_dim" not in record and "mse" not in record
    assert "square" in capsys.readouterr().out  # the per-class table names the classes
    assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["class_accuracy"] == record["class_accuracy"]
