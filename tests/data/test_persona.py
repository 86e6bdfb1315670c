"""Persona benchmark construction: users prefer statements matching their type's traits."""

import json
import pathlib
import tarfile

import numpy as np
import pytest

from pluralign.data import DatasetError, validate_dataset
from pluralign.data.persona import PersonaConfig, load_persona_statements, make_persona
from pluralign.data.sources import load_dataset

SHARED = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "anthropic_persona.tar.gz"


def _fake_persona(root: pathlib.Path, n_traits=6, per_answer=12) -> pathlib.Path:
    """persona/<trait>.jsonl files in the source schema; statements name their trait and answer."""
    folder = root / "persona"
    folder.mkdir(parents=True)
    for t in range(n_traits):
        lines = [{"question": "Is the following statement something you would say?",
                  "statement": f"trait {t} says {answer} number {i}", "label_confidence": 0.9,
                  "answer_matching_behavior": f" {answer}",
                  "answer_not_matching_behavior": " No" if answer == "Yes" else " Yes"}
                 for answer in ("Yes", "No") for i in range(per_answer)]
        (folder / f"trait-{t}.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return folder


def _yes_statements(path, traits):
    t = load_persona_statements(path, traits)
    rows = t.to_pylist()
    return {tr: {r["statement"] for r in rows if r["trait"] == tr and r["matching"]} for tr in traits}, \
           {tr: {r["statement"] for r in rows if r["trait"] == tr and not r["matching"]} for tr in traits}


def _check_construction(ds, path, contrary):
    truth = ds.meta["truth"]
    texts = np.array(ds.meta["item_texts"])
    type_traits = truth["type_traits"]
    yes, no = _yes_statements(path, [t for tt in type_traits for t in tt])
    c = ds.comparisons
    preferred = np.where(c.label == 1, c.a, c.b)
    other = np.where(c.label == 1, c.b, c.a)
    for u, p, o in zip(c.user, preferred, other):
        traits = type_traits[truth["user_group"][u]]
        assert any(texts[p] in yes[t] for t in traits)          # matches one of the user's traits
        assert not any(texts[o] in yes[t] for t in traits)      # the other matches none of them
        if contrary:
            assert any(texts[o] in no[t] for t in traits)       # a view the user's own trait rejects
        else:
            assert any(texts[o] in yes[t] for tt in type_traits for t in tt)  # another type's view


def test_users_prefer_statements_matching_their_traits(tmp_path):
    folder = _fake_persona(tmp_path)
    ds = make_persona(PersonaConfig(path=str(folder), n_types=3, traits_per_type=2, statements_per_trait=8,
                                    n_users=30, comparisons_per_user=20, seed=1))
    validate_dataset(ds)
    truth = ds.meta["truth"]
    assert np.bincount(truth["user_group"]).tolist() == [10, 10, 10]   # balanced types
    assert ds.n_items == 3 * 2 * 8 and ds.items.shape[1] == 256
    assert {t for tt in truth["type_traits"] for t in tt} == {f"trait-{i}" for i in range(6)}
    _check_construction(ds, folder, contrary=False)
    # Types disagree on every pair: no user-agnostic predictor beats a coin; the true model is perfect.
    assert truth["population_optimal_accuracy"] == pytest.approx(0.5)
    assert truth["bayes_optimal_accuracy"] == 1.0
    assert 0.4 < ds.comparisons.label.mean() < 0.6


def test_hydra_data_kind_caches_and_reads_back(tmp_path):
    folder = _fake_persona(tmp_path / "src")
    config = PersonaConfig(path=str(folder), n_types=2, traits_per_type=1, statements_per_trait=6,
                           n_users=6, comparisons_per_user=4)
    ds = load_dataset(config, cache_dir=tmp_path / "cache")
    assert ds.path is not None and ds.meta["truth"]["user_group"] == make_persona(config).meta["truth"]["user_group"]
    assert ds.meta["encoder"]["kind"] == "wordllama"
    other = load_dataset(PersonaConfig(**{**config.__dict__, "seed": 1}),
                         cache_dir=tmp_path / "cache")
    assert other.path != ds.path   # a different option is a different cache entry


def test_contrary_statements_and_label_noise(tmp_path):
    folder = _fake_persona(tmp_path)
    config = PersonaConfig(path=str(folder), n_types=2, traits_per_type=2, statements_per_trait=8,
                           n_users=20, comparisons_per_user=30, contrary_fraction=1.0, seed=0)
    ds = make_persona(config)
    _check_construction(ds, folder, contrary=True)
    assert ds.meta["truth"]["population_optimal_accuracy"] == pytest.approx(1.0)  # everyone agrees on these
    noisy = make_persona(PersonaConfig(**{**config.__dict__, "label_noise": 0.2}))
    flipped = np.mean(noisy.comparisons.label != ds.comparisons.label)
    assert 0.13 < flipped < 0.27 and noisy.meta["truth"]["bayes_optimal_accuracy"] == pytest.approx(0.8)


def test_tarball_explicit_traits_and_errors(tmp_path):
    folder = _fake_persona(tmp_path / "src")
    tar_path = tmp_path / "persona.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname="persona")
    traits = ["trait-5", "trait-0", "trait-2", "trait-3"]
    ds = make_persona(PersonaConfig(path=str(tar_path), n_types=2, traits_per_type=2, traits=traits,
                                    statements_per_trait=5, n_users=4, comparisons_per_user=5))
    assert ds.meta["truth"]["type_traits"] == [traits[:2], traits[2:]]
    with pytest.raises(ValueError, match="unknown persona trait"):
        make_persona(PersonaConfig(path=str(tar_path), n_types=2, traits_per_type=1, traits=["trait-0", "nope"]))
    with pytest.raises(DatasetError, match="no such file"):
        make_persona(PersonaConfig(path=str(tmp_path / "missing.tar.gz")))
    (folder / "trait-1.jsonl").write_text(json.dumps({"statement": "x", "answer_matching_behavior": "maybe"}))
    with pytest.raises(DatasetError, match=r"trait-1.jsonl row 0: answer_matching_behavior"):
        load_persona_statements(folder, ["trait-1"])


@pytest.mark.skipif(not SHARED.is_file(), reason="anthropic_persona.tar.gz not available")
def test_real_persona_statements():
    ds = make_persona(PersonaConfig(path=str(SHARED), n_types=2, traits_per_type=2, statements_per_trait=20,
                                    n_users=10, comparisons_per_user=10))
    validate_dataset(ds)
    _check_construction(ds, SHARED, contrary=False)
