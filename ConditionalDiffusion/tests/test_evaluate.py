"""evaluate.py on a tiny checkpoint: the harness record with the conditioning test, and the guidance sweep."""
import json
import math

import pytest
import torch

import evaluate
import train
from shared import features


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    return train.main(train.TrainConfig(image_size=8, batch_size=8, width=8, mults="1,2", attn="4", timesteps=20,
                                        sample_steps=2, grid_columns=1, threads=1, precision="fp32", steps=2,
                                        out=str(tmp_path / "run")))


def test_evaluate_writes_the_harness_record_with_the_class_accuracy_of_the_same_samples(tiny_run, monkeypatch):
    calls = []
    real = evaluate.sample
    monkeypatch.setattr(evaluate, "sample", lambda net, y, *a, **k: calls.append(len(y)) or real(net, y, *a, **k))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(tiny_run), num=30, steps=2, guidance=2.0))
    assert sum(calls) == 30  # the conditioning test scored the FID's class-balanced samples, none drawn twice
    assert math.isfinite(record["fid"]) and record["fid"] > record["fid_floor"] >= 0
    assert 0 <= record["class_accuracy"] <= 1 and len(record["class_accuracy_per_class"]) == 10
    assert record["guidance"] == 2.0 and record["sample_steps"] == 2
    assert json.loads((tiny_run / "eval.jsonl").read_text().splitlines()[-1])["fid"] == record["fid"]


def test_the_balanced_sampler_serves_other_requests_with_fresh_samples(tiny_run):
    from sample import load_model

    net, _ = load_model(tiny_run, torch.device("cpu"))
    sampler = evaluate.BalancedSampler(net, 1.0, 2, 0.0)
    first = sampler.sample(12, torch.Generator().manual_seed(0))
    assert torch.equal(sampler.labels, torch.arange(12) % 10)
    assert torch.equal(sampler.sample_class(torch.arange(5) % 10, torch.Generator()), first[:5])
    other = sampler.sample_class(torch.tensor([3, 3]), torch.Generator().manual_seed(1))  # not the next chunk
    assert other.shape == (2, 1, 8, 8) and not torch.equal(other, first[5:7])


def test_the_guidance_sweep_writes_its_table_and_plot(tiny_run):
    rows = evaluate.main(evaluate.EvalConfig(checkpoint=str(tiny_run), num=30, steps=2, sweep="0,1,3",
                                             sweep_num=20))["guidance_sweep"]
    assert [(r["guidance"], r["num"]) for r in rows] == [(0.0, 20), (1.0, 20), (3.0, 20)]
    assert all(r["fid"] > 0 and 0 <= r["worst_class_accuracy"] <= r["class_accuracy"] <= 1 for r in rows)
    assert (tiny_run / "guidance_sweep.png").is_file()
    assert "| 3 | 20 |" in (tiny_run / "guidance_sweep.md").read_text()
    assert not (tiny_run / "eval.jsonl").exists()  # the sweep writes no harness record
