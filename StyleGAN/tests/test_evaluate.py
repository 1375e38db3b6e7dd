"""evaluate.py on a tiny checkpoint: the harness runs and records the GAN's metrics (and only those)."""
# Adapted from DCGAN/tests/test_evaluate.py: the EMA generator and the truncation in the record.
import json
import math

import evaluate
import train
from shared import features


def test_evaluate_writes_a_record_with_gan_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    run = train.main(train.TrainConfig(dataset="mnist", image_size=16, batch_size=8, z_dim=8, w_dim=8, g_width=8,
                                       d_width=8, threads=1, precision="fp32", steps=2, minutes=0,
                                       out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=60, truncation=0.7))
    assert record["fid"] > record["fid_floor"] >= 0
    assert math.isfinite(record["fid"]) and math.isfinite(record["kid"])
    for key in ("precision", "recall", "memorised_fraction"):
        assert 0 <= record[key] <= 1, key
    assert record["truncation"] == 0.7 and record["train_images_per_s"] > 0
    G = sum(p.numel() for p in evaluate.load_generator(run, "cpu")[0].parameters())
    assert record["params"] == G
    assert "bits_per_dim" not in record and "mse" not in record
    assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["fid"] == record["fid"]
