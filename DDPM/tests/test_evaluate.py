"""evaluate.py on a tiny checkpoint: the harness record with the bound in bits/dim, and the FID-vs-steps sweep."""
import json
import math

import evaluate
import train
from shared import features


def test_evaluate_writes_the_harness_record_with_the_bound_and_the_sweep_its_table(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    run = train.main(train.TrainConfig(image_size=8, batch_size=8, width=8, mults="1,2", attn="4", timesteps=20,
                                       sample_steps=2, threads=1, precision="fp32", steps=2, out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=30, steps=3, bound_num=6, bound_timesteps=4))
    assert math.isfinite(record["fid"]) and record["fid"] > record["fid_floor"] >= 0
    assert record["sample_images_per_s"] > 0 and record["sample_steps"] == 3
    assert 0 < record["bits_per_dim"] < 16 and record["bound_images"] == 6 and record["bound_timesteps"] == 4
    assert record["bound_nats"] == __import__("pytest").approx(record["bits_per_dim"] * 64 * math.log(2))
    assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["fid"] == record["fid"]

    rows = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=30, sweep="2,4", sweep_num=10,
                                             ancestral_num=2))["fid_vs_steps"]
    assert [(r["sampler"], r["steps"], r["num"]) for r in rows] == [("ddim", 2, 10), ("ddim", 4, 10),
                                                                   ("ancestral", 20, 2)]
    assert all(r["fid"] > 0 and r["seconds_per_image"] > 0 for r in rows)
    assert (run / "fid_vs_steps.png").is_file() and "| ancestral | 20 | 2 |" in (run / "fid_vs_steps.md").read_text()
    assert len((run / "eval.jsonl").read_text().splitlines()) == 1  # the sweep leaves the harness record last
