"""evaluate.py on a tiny run: the harness record with reconstruction PSNR and both stages' speeds, the sweep."""
import json
import math

import evaluate
import train
from shared import features


def test_evaluate_writes_the_harness_record_and_the_sweep_its_table(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    out = train.main(train.TrainConfig(image_size=16, batch_size=8, diffusion_batch_size=8, ae_width=8, width=16,
                                       mults="1,2", attn="", timesteps=20, sample_steps=2, scale_images=32,
                                       threads=1, precision="fp32", steps=2, diffusion_steps=2, log_every=1,
                                       out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(out), num=30, steps=3))
    assert math.isfinite(record["fid"]) and record["fid"] > record["fid_floor"] >= 0
    assert record["sample_images_per_s"] > 0 and record["sample_steps"] == 3
    assert 0 < record["psnr"] < 60 and record["mse"] > 0  # the autoencoder's reconstructions
    assert record["autoencoder_train_images_per_s"] > 0 and record["diffusion_train_images_per_s"] > 0
    assert record["train_images_per_s"] == record["diffusion_train_images_per_s"]
    assert record["scale_factor"] > 0
    assert json.loads((out / "eval.jsonl").read_text().splitlines()[-1])["fid"] == record["fid"]

    rows = evaluate.main(evaluate.EvalConfig(checkpoint=str(out), num=30, sweep="2,4", sweep_num=10,
                                             ancestral_num=2))["fid_vs_steps"]
    assert [(r["sampler"], r["steps"], r["num"]) for r in rows] == [("ddim", 2, 10), ("ddim", 4, 10),
                                                                   ("ancestral", 20, 2)]
    assert all(r["fid"] > 0 and r["seconds_per_image"] > 0 for r in rows)
    assert (out / "fid_vs_steps.png").is_file() and "| ancestral | 20 | 2 |" in (out / "fid_vs_steps.md").read_text()
