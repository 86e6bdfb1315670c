"""lore's rank chosen on held-out likelihood (`model.rank_candidates`, `pluralign.run.train_rank_candidates`).

A tiny run trains every candidate in its own directory, records each one's seen-user validation
loss, keeps the lowest and exports that rank; the choice itself follows the validation loss
whatever order the candidates come in; the option is validated.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import pluralign
from pluralign import run as run_module
from pluralign.data.synthetic import IdealPointConfig
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.models.lore import LoReConfig
from pluralign.run import RunConfig, Trained, run, train_rank_candidates
from pluralign.train.trainer import TrainConfig


def tiny_config(tmp_path, **model) -> RunConfig:
    return RunConfig(
        model=LoReConfig(hidden=[8], residual_dim=0, **model),
        data=IdealPointConfig(n_users=30, n_items=60, comparisons_per_user=12, dim=8, n_groups=2, seed=0),
        train=TrainConfig(progress=False, max_epochs=2, batch_size=64),
        eval=EvalConfig(shots=[1], modes=["random"], draws=1, prior_scales=[1.0]),
        cache_dir=str(tmp_path / "cache"),
    )


@pytest.mark.slow  # ~30 s on 2 shared cores: three trainers and the evaluation compile, then a resume
def test_run_trains_every_candidate_and_exports_the_lowest_validation_loss(tmp_path):
    run_dir = tmp_path / "run"
    run(tiny_config(tmp_path, rank_candidates=[1, 3]), run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    selection = results["rank_selection"]
    losses = {int(r): v for r, v in selection["candidates"].items()}
    assert sorted(losses) == [1, 3] and all(np.isfinite(v) for v in losses.values())
    assert selection["chosen"] == min(losses, key=losses.get)
    for rank, loss in losses.items():  # each candidate's own training: its best seen-user validation loss
        assert (run_dir / f"rank_{rank}" / "checkpoints").is_dir()
        records = [json.loads(line) for line in (run_dir / f"rank_{rank}" / "metrics.jsonl").read_text().splitlines()]
        assert loss == pytest.approx(min(r["val_loss"][0] for r in records), rel=1e-6)
    # one population stage for the run, not one per candidate
    assert (run_dir / "population" / "checkpoints").is_dir() and not (run_dir / "rank_1" / "population").exists()
    assert results["train"]["best_val_loss"] == pytest.approx([losses[selection["chosen"]]], rel=1e-6)
    assert results["config"]["model"]["rank"] == selection["chosen"]
    loaded = pluralign.load(run_dir)
    assert loaded.record["model_config"]["rank"] == selection["chosen"]
    assert loaded.model.user_weights[...].shape == (30, selection["chosen"])
    # a second run resumes every candidate from its finished checkpoints (no epoch trained again) ...
    lines = {r: (run_dir / f"rank_{r}" / "metrics.jsonl").read_text() for r in losses}
    again = run(tiny_config(tmp_path, rank_candidates=[1, 3]), run_dir)
    assert again["rank_selection"] == {"candidates": pytest.approx(losses), "chosen": selection["chosen"]}
    assert lines == {r: (run_dir / f"rank_{r}" / "metrics.jsonl").read_text() for r in losses}
    # ... and other candidates are another config, refused in this directory
    with pytest.raises(ValueError, match="differs in: model.rank_candidates"):
        run(tiny_config(tmp_path, rank_candidates=[1, 3, 5]), run_dir)


@pytest.mark.parametrize("losses", [{2: 0.6, 4: 0.4, 8: 0.5}, {2: 0.3, 4: 0.4, 8: 0.5}, {2: 0.6, 4: 0.7, 8: 0.5}])
def test_choice_is_the_lowest_mean_validation_loss(tmp_path, monkeypatch, losses):
    """Each candidate is built and trained with its own rank in run_dir/rank_<r>, sharing the run's
    population stage; the rank with the lowest validation loss, averaged over seeds, is returned."""
    calls = []

    def fake_build(config, data):
        return ("models", config.model.rank)

    def fake_train(config, data, models, run_dir, on_epoch_end=None, population_dir=None):
        calls.append((config.model.rank, models, run_dir.name, population_dir))
        loss = losses[config.model.rank]
        return Trained(best_params=None, best_val_loss=np.array([loss - 0.1, loss + 0.1]), summary={})

    monkeypatch.setattr(run_module, "build_models", fake_build)
    monkeypatch.setattr(run_module, "train_models", fake_train)
    config = tiny_config(tmp_path, rank_candidates=[2, 4, 8])
    chosen_config, models, trained, selection = train_rank_candidates(config, None, tmp_path)
    best = min(losses, key=losses.get)
    assert calls == [(r, ("models", r), f"rank_{r}", tmp_path) for r in (2, 4, 8)]
    assert selection == {"candidates": pytest.approx(losses), "chosen": best}
    assert chosen_config.model.rank == best and models == ("models", best)
    assert float(np.mean(trained.best_val_loss)) == pytest.approx(losses[best])
    assert config.model.rank == 4  # the caller's config is left as it was


@pytest.mark.parametrize("bad", [[0, 2], [2, 2], [1.5], [-1]])
def test_rank_candidates_validated(bad):
    with pytest.raises(ValueError, match="model.rank_candidates must be distinct positive integers"):
        LoReConfig(rank_candidates=bad)
