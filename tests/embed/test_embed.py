"""Extraction: dedup, resumable chunks, table -> valid dataset, `pluralign embed` CLI."""

from __future__ import annotations

import csv
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pluralign.data import read_dataset
from pluralign.embed import load_encoder
from pluralign.data.embed_table import EmbedConfig, embed_table
from pluralign.embed.extract import ChunkStore, EmbedStats, embed_texts, text_key

WORDS = "the a cat dog sat on mat runs fast slow red blue green good bad".split()


class CountingEncoder:
    """Wraps an encoder, counting the texts it embeds; optionally fails after n chunks."""

    def __init__(self, base, fail_after_calls: int | None = None):
        self.base, self.fail_after_calls = base, fail_after_calls
        self.dim, self.batch_size = base.dim, base.batch_size
        self.calls, self.texts, self.batch_sizes = 0, [], []

    def describe(self):
        return self.base.describe()

    def encode(self, texts, batch_size=None, on_batch=None):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.texts.extend(texts)
        self.batch_sizes.append(batch_size)
        return self.base.encode(texts, batch_size=batch_size, on_batch=on_batch)


@pytest.fixture(scope="module")
def wordllama():
    return load_encoder("wordllama")


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(2, 12))) + f" {i}" for i in range(n)]


def test_dedup_embeds_each_distinct_text_once(wordllama):
    base = _texts(20)
    pairs = [("a prompt", base[0]), ("another prompt", base[0])]  # same response, other prompts
    texts = base + base[::-1] + pairs + [pairs[0]] + [base[3]]
    enc = CountingEncoder(wordllama)
    st = EmbedStats()
    index, table = embed_texts(texts, enc, chunk_size=7, stats=st)
    assert len(enc.texts) == len(set(enc.texts)) == 22 == table.shape[0]
    assert (st.n_texts, st.n_distinct, st.n_encoded, st.n_chunks) == (len(texts), 22, 22, 4)
    np.testing.assert_array_equal(index[:20], np.arange(20))          # first appearance order
    np.testing.assert_array_equal(index[20:40], np.arange(20)[::-1])
    assert index[-2] == index[40] and index[40] != index[41]
    np.testing.assert_allclose(table[index], wordllama.encode(texts), atol=1e-6)
    assert text_key(("ab", "c")) != text_key(("a", "bc")) != text_key("abc")


def test_interrupted_run_resumes_without_recomputing(wordllama, tmp_path):
    texts = _texts(50)
    work = tmp_path / "work"
    first = CountingEncoder(wordllama, fail_after_calls=3)
    with pytest.raises(KeyboardInterrupt):
        embed_texts(texts, first, work, chunk_size=8)
    assert first.calls == 3 and len(list(work.glob("chunk-*.npz"))) == 3
    assert not list(work.glob(".*.tmp-*"))  # an interrupted write leaves no half chunk

    second = CountingEncoder(wordllama)
    st = EmbedStats()
    index, table = embed_texts(texts[::-1], second, work, chunk_size=8, stats=st)  # any order
    assert st.n_reused == 24 and len(second.texts) == 26
    assert set(second.texts).isdisjoint(first.texts)
    np.testing.assert_allclose(table[index], wordllama.encode(texts[::-1]), atol=1e-6)

    third = CountingEncoder(wordllama)
    embed_texts(texts, third, work, chunk_size=8)
    assert third.calls == 0  # everything is on disk now


def test_keys_ending_in_nul_bytes_round_trip(wordllama, tmp_path):
    texts = [t for t in (f"text {i}" for i in range(5000)) if text_key(t).endswith(b"\x00")][:3]
    assert texts
    embed_texts(texts, wordllama, tmp_path / "w")
    again = CountingEncoder(wordllama)
    index, table = embed_texts(texts, again, tmp_path / "w")
    assert again.calls == 0
    np.testing.assert_allclose(table[index], wordllama.encode(texts), atol=1e-6)


def test_work_dir_refuses_another_encoder(wordllama, tmp_path):
    embed_texts(["a cat"], wordllama, tmp_path / "w")
    other = load_encoder("wordllama", normalize=True)
    with pytest.raises(ValueError, match="another encoder"):
        embed_texts(["a cat"], other, tmp_path / "w")
    store = ChunkStore(tmp_path / "w", wordllama.describe(), wordllama.dim)
    assert len(store) == 1 and text_key("a cat") in store


def _write_table(path: pathlib.Path, n_users: int = 4, per_user: int = 6, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    responses = _texts(15, seed)
    prompts = ["what do you like", "tell me a story", "why is it good"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["worker", "question", "chosen", "rejected"])
        for u in range(n_users):
            for _ in range(per_user):
                a, b = rng.choice(len(responses), 2, replace=False)
                w.writerow([f"w{u}", prompts[rng.integers(3)], responses[a], responses[b]])
    return n_users * per_user


def test_embed_table_writes_a_valid_resumable_dataset(wordllama, tmp_path):
    n = _write_table(tmp_path / "prefs.csv")
    cfg = EmbedConfig(input=str(tmp_path / "prefs.csv"), output=str(tmp_path / "ds"), user="worker",
                      a="chosen", b="rejected", label=None, prompt="question", chunk_size=4,
                      batch_size=3, storage_dtype="float16", progress=False, keep_work_dir=True)
    enc = CountingEncoder(wordllama, fail_after_calls=2)
    with pytest.raises(KeyboardInterrupt):
        embed_table(cfg, encoder=enc)
    assert not (tmp_path / "ds").exists()  # nothing that reads as a dataset
    resumed = CountingEncoder(wordllama)
    path = embed_table(cfg, encoder=resumed)
    assert set(resumed.texts).isdisjoint(enc.texts) and len(enc.texts) == 8
    assert set(resumed.batch_sizes) == {3}  # the job's batch_size reaches the encoder

    ds = read_dataset(path)  # validates
    assert len(ds.comparisons) == n and ds.n_users == 4 and ds.items.dtype == np.float16
    assert ds.n_prompts == 3 and ds.meta["user_ids"] == ["w0", "w1", "w2", "w3"]
    e = ds.meta["encoder"]
    assert (e["model"], e["pooling"], e["dim"], e["dtype"], e["storage_dtype"]) == (
        "wordllama/l2_supercat", "mean", 256, "float32", "float16")
    assert ds.meta["embed"]["reused_from_work_dir"] == 8
    assert ds.meta["embed"]["encoded"] == 0 or ds.meta["embed"]["texts_per_second"] > 0
    # Items stored once, and each comparison points at its own texts.
    rows = list(csv.DictReader(open(tmp_path / "prefs.csv")))
    assert ds.n_items == len({r["chosen"] for r in rows} | {r["rejected"] for r in rows})
    want = wordllama.encode([rows[5]["chosen"], rows[5]["rejected"], rows[5]["question"]])
    got = np.stack([ds.items[ds.comparisons.a[5]], ds.items[ds.comparisons.b[5]],
                    ds.prompts[ds.comparisons.prompt[5]]]).astype(np.float32)
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())
    np.testing.assert_array_equal(ds.comparisons.label, 1.0)
    with pytest.raises(FileExistsError):
        embed_table(cfg, encoder=resumed)


def test_embed_table_with_tiny_transformer(tiny_llama, tmp_path):
    _write_table(tmp_path / "prefs.csv", n_users=2, per_user=3)
    enc = load_encoder("hf", model=str(tiny_llama), local_files_only=True, pooling="last",
                       chat_template=True, device="cpu")
    path = embed_table(EmbedConfig(input=str(tmp_path / "prefs.csv"), output=str(tmp_path / "ds"),
                                   user="worker", a="chosen", b="rejected", label=None,
                                   prompt="question", embed_with_prompt=True, progress=False),
                       encoder=enc)
    ds = read_dataset(path)
    assert ds.dim == 32 and ds.meta["encoder"]["chat_template"] is True
    assert ds.meta["encoder"]["layer"] == "last" and ds.meta["encoder"]["model"] == str(tiny_llama)
    assert not (tmp_path / "ds.partial").exists()  # work dir removed after a good write


def test_identical_pairs_error_or_drop(wordllama, tmp_path):
    from pluralign.data import DatasetError

    n = _write_table(tmp_path / "prefs.csv", n_users=2, per_user=3)
    with open(tmp_path / "prefs.csv", "a", newline="") as f:
        csv.writer(f).writerow(["w1", "why is it good", "the same answer", "the same answer"])
    cfg = dict(input=str(tmp_path / "prefs.csv"), user="worker", a="chosen", b="rejected",
               label=None, progress=False)
    with pytest.raises(DatasetError, match="row 6"):
        embed_table(EmbedConfig(output=str(tmp_path / "ds"), **cfg), encoder=wordllama)
    ds = read_dataset(embed_table(EmbedConfig(output=str(tmp_path / "ds"), identical="drop", **cfg),
                                  encoder=wordllama))
    assert len(ds.comparisons) == n and ds.meta["embed"]["dropped_identical"] == 1
    assert ds.meta["name"] == "prefs"


def test_embed_ratings_table(wordllama, tmp_path):
    texts = _texts(5)
    with open(tmp_path / "ratings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "rating"])
        for u, ratings in enumerate([[1, 2, 3], [3, 1, 2, 5]]):
            for t, r in zip(texts, ratings):
                w.writerow([u, t, r])
    path = embed_table(EmbedConfig(input=str(tmp_path / "ratings.csv"), output=str(tmp_path / "ds"),
                                   table="ratings", progress=False), encoder=wordllama)
    ds = read_dataset(path)
    assert ds.n_items == 4 and len(ds.comparisons) == 3 + 6 and ds.meta["encoder"]["dim"] == 256


@pytest.mark.slow
def test_cli_embed(tmp_path):
    _write_table(tmp_path / "prefs.csv", n_users=3, per_user=4)
    env = {**os.environ, "JAX_NUMPY_RANK_PROMOTION": "raise", "JAX_NUMPY_DTYPE_PROMOTION": "strict", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "pluralign.cli", "embed", f"input={tmp_path / 'prefs.csv'}",
           f"output={tmp_path / 'ds'}", "user=worker", "a=chosen", "b=rejected", "label=null",
           "prompt=question", "chunk_size=5"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "texts/s" in out.stdout + out.stderr
    ds = read_dataset(tmp_path / "ds")
    assert ds.meta["encoder"]["model"] == "wordllama/l2_supercat" and len(ds.comparisons) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "prefs.csv"]  # no Hydra litter


def _compose_embed(overrides):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import pluralign.cli  # noqa: F401  (registers the schemas)
    with initialize_config_module(config_module="pluralign.conf", version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="embed", overrides=overrides))


def test_embed_config_composes_and_catches_typos():
    from hydra.errors import ConfigCompositionException

    from pluralign.embed import TransformersEncoderConfig, WordLlamaEncoderConfig

    io = ["input=t.csv", "output=ds"]
    cfg = _compose_embed(io)
    assert isinstance(cfg, EmbedConfig) and isinstance(cfg.encoder, WordLlamaEncoderConfig)
    cfg = _compose_embed(io + ["encoder=hf", "encoder.model=/m", "encoder.layer=-2",
                               "encoder.pooling=mean", "label=null", "storage_dtype=float16"])
    assert isinstance(cfg.encoder, TransformersEncoderConfig)
    assert (cfg.encoder.layer, cfg.encoder.pooling, cfg.label) == ("-2", "mean", None)
    for typo in ["encoder.pooling=mean", "chunk_sise=3", "encoder=hf encoder.layr=2"]:
        with pytest.raises(ConfigCompositionException):
            _compose_embed(io + typo.split())
