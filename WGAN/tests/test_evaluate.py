"""evaluate.py on a tiny WGAN checkpoint: the harness runs and records the GAN's metrics (and only those)."""
import json

import evaluate
import train
from shared import features


def test_evaluate_writes_a_record_with_gan_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    run = train.main(train.TrainConfig(image_size=16, batch_size=8, z_dim=8, g_width=8, d_width=8, threads=1,
                                       precision="fp32", steps=2, out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=60))
    for key in ("fid", "fid_floor", "kid", "precision", "recall", "is", "memorised_fraction",
                "sample_images_per_s", "train_images_per_s", "params"):
        assert record[key] is not None, key
    assert record["fid"] > record["fid_floor"]  # an untrained G is further from the data than real images are
    assert "bits_per_dim" not in record and "mse" not in record  # a GAN has neither
    assert record["extractor"].startswith("classifier:shapes")
    assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["fid"] == record["fid"]
