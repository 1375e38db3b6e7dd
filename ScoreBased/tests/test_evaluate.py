"""evaluate.py on a tiny checkpoint: the harness record with the ODE bits/dim, and the per-sampler sweep."""
import json
import math

import pytest

import evaluate
import train
from shared import features


def test_evaluate_writes_the_harness_record_with_ode_bits_per_dim_and_the_sweep_its_table(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    run = train.main(train.TrainConfig(image_size=8, batch_size=8, width=8, mults="1,2", attn="4", sample_steps=2,
                                       threads=1, precision="fp32", steps=2, out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=30, steps=3, bpd_num=4, bpd_batch=2,
                                               bpd_rtol=1e-3, bpd_atol=1e-3))
    assert math.isfinite(record["fid"]) and record["fid"] > record["fid_floor"] >= 0
    assert record["sample_images_per_s"] > 0 and record["sample_nfe"] == 6 and record["sampler"] == "pc"
    # an (almost) untrained network: a finite density, worse than a uniform one on [-1, 1) (8 bits/dim)
    assert 8 < record["bits_per_dim"] < 30 and record["bpd_images"] == 4 and record["bpd_nfe"] > 10
    assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["fid"] == record["fid"]

    rows = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=30, sweep="pc:2,em:3,ode:0.01",
                                             sweep_num=10))["fid_vs_sampler"]
    assert [(r["sampler"], r["setting"], r["nfe"]) for r in rows[:2]] == [("pc", "2 steps", 4), ("em", "3 steps", 3)]
    assert rows[2]["setting"] == "tol 0.01" and rows[2]["nfe"] > 0
    assert all(r["fid"] > 0 and r["seconds_per_image"] > 0 for r in rows)
    assert "| em | 3 steps | 10 | 3 |" in (run / "fid_vs_sampler.md").read_text()
    assert len((run / "eval.jsonl").read_text().splitlines()) == 1  # the sweep leaves the harness record last


@pytest.mark.parametrize("bad", ["heun:10", "pc:0", "pc:2.5", "ode:x"])
def test_a_bad_sweep_setting_is_refused(bad):
    with pytest.raises(ValueError, match="--sweep"):
        evaluate.parse_sweep(bad)
