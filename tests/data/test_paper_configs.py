"""The paper-table experiment configs (conf/experiment/paper_*.yaml) compose, and run end to end
offline on small local copies of each hub dataset's records (fixtures in the published schema,
written here) with the offline encoder instead of the paper's LM."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from pluralign import cli
from pluralign.data import validate_dataset
from pluralign.data.sources import load_dataset
from pluralign.models import REGISTRY

PAPER = {  # experiment -> (data kind, the models its sweep runs)
    "paper_pal_tldr": ("tldr", ["bt", "pal_a", "pal_b"]),
    "paper_pal_pickapic": ("pickapic", ["bt", "pal_a", "pal_b"]),
    "paper_vpl_ultrafeedback_p2": ("ultrafeedback_p", ["bt", "vpl"]),
    "paper_vpl_ultrafeedback_p4": ("ultrafeedback_p", ["bt", "vpl"]),
    "paper_dpa_helpsteer2": ("helpsteer2", ["dpa"]),
    "paper_mrm_tldr": ("tldr", ["lore"]),
    "paper_mrm_prism": ("prism", ["lore"]),
    "gpm_cyclic": ("cyclic_triplets", ["bt", "gpm"]),
}
TINY = ["train=fast", "train.checkpoint=false", "eval=fast", "eval.shots=[1,2]", "seeds=[0]",
        "eval.unseen_val_fraction=0.2", "eval.unseen_test_fraction=0.3", "eval.pair_val_fraction=0.2"]


@pytest.fixture(scope="module", autouse=True)
def _hydra():
    """One Hydra initialisation for the module (composing is then ~0.1 s)."""
    with initialize_config_module(config_module="pluralign.conf", version_base="1.3"):
        yield


def _compose(overrides, hydra_config=False):
    return compose(config_name="config", overrides=overrides, return_hydra_config=hydra_config)


def _sweep_models(experiment) -> list[str]:
    params = _compose([f"experiment={experiment}"], hydra_config=True).hydra.sweeper.params
    return params["model"].split(",") if params and "model" in params else [
        _compose([f"experiment={experiment}"]).model.name]


# ----------------------------------------------------------------- fixtures in the hub schemas

def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _tldr_records(n_workers=12, per_worker=14):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_workers * per_worker):
        cnn = i % 17 == 0
        info = {"id": f"t3_{i}", "post": None if cnn else f"post {i % 40} about topic {i % 7}", "title": "t",
                "subreddit": "r", "site": None, "article": f"article {i}" if cnn else None}
        rows.append({"info": info, "summaries": [{"text": f"summary {i} short", "policy": "sup", "note": None},
                                                 {"text": f"summary {i} long and detailed", "policy": "ppo",
                                                  "note": None}],
                     "choice": int(rng.integers(2)), "worker": f"w{i % n_workers}", "batch": "b", "split": "valid",
                     "extra": {"confidence": 5}})
    return rows


def _ultrafeedback_records(n=120):
    rng = np.random.default_rng(1)
    names = ("helpfulness", "honesty", "instruction_following", "truthfulness")
    return [{"source": "s", "instruction": f"instruction {i}", "models": [],
             "completions": [{"model": f"m{k}", "response": f"response {i}.{k} {'very ' * k}good", "critique": "",
                              "overall_score": 5.0,
                              "annotations": {a: {"Rating": str(int(v)), "Rationale": ""}
                                              for a, v in zip(names, rng.integers(1, 6, size=4))}}
                             for k in range(4)]} for i in range(n)]


def _helpsteer2_records(n=80):
    rng = np.random.default_rng(2)
    names = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
    return [{"prompt": f"prompt {i // 2}", "response": f"response {i} {'long ' * (i % 5)}",
             **{a: int(v) for a, v in zip(names, rng.integers(0, 5, size=5))}} for i in range(n)]


def _prism_records(n_users=12, conversations=3, turns=2, replies=3):
    """Conversations in the ``conversations`` schema: each turn, one user message and a few model
    replies scored 1-100 by the user; the user's taste is a hidden preference for long replies
    (or short ones), so users differ."""
    rng = np.random.default_rng(4)
    records = []
    for u in range(n_users):
        likes_long = u % 2 == 0
        for c in range(conversations):
            cid, history = f"c{u}.{c}", []
            for t in range(turns):
                history.append({"turn": t, "role": "user", "content": f"question {c}.{t} on topic {(u + c) % 5}",
                                "model_name": None, "score": None, "if_chosen": None, "within_turn_id": None})
                lengths = rng.permutation(replies) + 1
                for k, n in enumerate(lengths):
                    score = int(np.clip(50 + (20 if likes_long else -20) * (n - 2) + rng.normal(0, 5), 1, 100))
                    history.append({"turn": t, "role": "model", "content": f"{cid} t{t} reply {k} " + "detail " * n,
                                    "model_name": f"m{k}", "score": score, "if_chosen": None, "within_turn_id": k})
            records.append({"conversation_id": cid, "user_id": f"user{u}", "conversation_history": history})
    return records


def _pickapic(tmp_path, n_users=12, per_user=12, n_images=60, dim=16):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n_users * per_user):
        a, b = rng.choice(n_images, size=2, replace=False)
        rows.append({"caption": f"caption {i % 30}", "user_id": int(i % n_users), "image_0_uid": f"img{a}",
                     "image_1_uid": f"img{b}", "label_0": float(rng.choice([0.0, 1.0, 0.5], p=[0.45, 0.45, 0.1])),
                     "label_1": 0.0, "has_label": True})
    np.save(tmp_path / "clip.npy", rng.standard_normal((n_images, dim)).astype(np.float32))
    (tmp_path / "uids.txt").write_text("".join(f"img{k}\n" for k in range(n_images)))
    return [f"data.path={_jsonl(tmp_path / 'pickapic.jsonl', rows)}", f"data.image_features={tmp_path / 'clip.npy'}",
            f"data.image_ids={tmp_path / 'uids.txt'}"]


def _offline_data(experiment, tmp_path) -> list[str]:
    """Overrides that point an experiment's data at a local fixture and the offline encoder."""
    kind = PAPER[experiment][0]
    if kind == "pickapic":
        return _pickapic(tmp_path)
    if kind == "cyclic_triplets":
        return ["data.n_users=30", "data.triplets_per_user=6"]
    records = {"tldr": _tldr_records, "ultrafeedback_p": _ultrafeedback_records,
               "helpsteer2": _helpsteer2_records, "prism": _prism_records}[kind]()
    extra = {"helpsteer2": ["data.n_users=24", "data.comparisons_per_user=12"],
             "ultrafeedback_p": ["data.comparisons_per_user=6"]}.get(kind, [])
    return [f"data.path={_jsonl(tmp_path / f'{kind}.jsonl', records)}", "data.encoder=wordllama", *extra]


# ----------------------------------------------------------------- tests

@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_paper_configs_compose_for_every_model_they_sweep(experiment):
    kind, models = PAPER[experiment]
    assert _sweep_models(experiment) == models
    for model in models:
        config = cli.run_config(_compose([f"experiment={experiment}", f"model={model}"]))
        assert config.data.kind == kind and config.model.name == model and len(config.seeds) == 3
        assert isinstance(config.model, REGISTRY[model][1])


def test_paper_encoders_are_the_papers_and_the_offline_override_works():
    tldr = cli.run_config(_compose(["experiment=paper_pal_tldr", "model=pal_b"])).data
    assert tldr.encoder["name"] == "hf" and tldr.encoder["model"] == "facebook/opt-350m"
    p4 = cli.run_config(_compose(["experiment=paper_vpl_ultrafeedback_p4", "model=vpl"])).data
    assert len(p4.attributes) == 4 and p4.encoder["model"] == "meta-llama/Llama-2-7b-hf"
    assert cli.run_config(_compose(["experiment=paper_pal_tldr", "data.encoder=wordllama"])).data.encoder == "wordllama"


@pytest.mark.parametrize("experiment", sorted(e for e in PAPER if e != "gpm_cyclic"))
def test_hub_data_kinds_read_the_local_fixtures(experiment, tmp_path):
    config = cli.run_config(_compose([f"experiment={experiment}", *_offline_data(experiment, tmp_path)]))
    ds = load_dataset(config.data, cache_dir=tmp_path / "cache")
    validate_dataset(ds)
    assert ds.n_users >= 10 and len(ds.comparisons) >= 100
    if experiment == "paper_dpa_helpsteer2":
        assert ds.attributes.shape[1] == 5
    if experiment.startswith("paper_vpl"):
        assert set(ds.meta["truth"]["user_group"]) == set(range(len(config.data.attributes)))


def test_pickapic_without_features_says_what_it_needs(tmp_path):
    config = cli.run_config(_compose(["data=pickapic", f"data.path={tmp_path / 'x.jsonl'}"]))
    with pytest.raises(ValueError, match="image_features"):
        load_dataset(config.data, cache_dir=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_a_tiny_run_of_each_paper_config(experiment, tmp_path):
    from pluralign.run import run

    model = PAPER[experiment][1][-1]  # the paper's own model (the last of the sweep)
    swept = _compose([f"experiment={experiment}"], hydra_config=True).hydra.sweeper.params or {}
    # the last value of any other swept option too (paper_mrm_tldr: train.meta=true)
    others = [f"{key}={str(values).split(',')[-1]}" for key, values in swept.items() if key != "model"]
    overrides = [f"experiment={experiment}", f"model={model}", *others, *TINY, *_offline_data(experiment, tmp_path),
                 f"cache_dir={tmp_path / 'cache'}"]
    results = run(cli.run_config(_compose(overrides)), tmp_path / "run")
    assert results["status"] == "complete" and results["model"] == model
    assert results["config"]["train"]["meta"] == experiment.startswith("paper_mrm")
    assert 0.0 <= results["seen"]["accuracy"] <= 1.0
