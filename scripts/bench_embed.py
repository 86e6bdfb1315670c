"""Embedding throughput and resume behaviour of `pluralign embed`.

  python scripts/bench_embed.py [--rows 2000] [--data ../shared/data/relabeled_hh_rlhf/both_test.jsonl.gz]

Texts are real HH-RLHF prompts and responses (the relabelled test split). Measures
1. texts/s of the offline wordllama encoder and of a tiny randomly initialised
   Llama (2 layers, hidden 32, wordllama's 32k BPE tokenizer, max 256 tokens),
   through `embed_texts` (dedup + chunked work dir);
2. resume: `pluralign embed` (tiny model) is killed with SIGKILL once a few chunks
   are on disk, then rerun with the same command; the rerun's meta.json says how many
   texts it reused and how many it embedded.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from pluralign.embed import load_encoder
from pluralign.embed.extract import EmbedStats, embed_texts

from bench_args import parse_args

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared/data/relabeled_hh_rlhf/both_test.jsonl.gz"


def save_tiny_llama(root: pathlib.Path) -> pathlib.Path:
    import torch
    import wordllama
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    tok_file = pathlib.Path(wordllama.__file__).parent / "tokenizers" / "l2_supercat_tokenizer_config.json"
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_file), bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=512))
    path = root / "tiny-llama"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def throughput(name: str, encoder, texts: list[str], work_dir: pathlib.Path) -> None:
    st = EmbedStats()
    t0, cpu0 = time.perf_counter(), time.process_time()
    embed_texts(texts, encoder, work_dir, chunk_size=1024, stats=st)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    # CPU seconds (all threads of this process) make a figure that a loaded machine
    # does not distort as much as wall time does.
    print(f"{name:10s} {st.n_texts:6d} texts ({st.n_distinct} distinct, {st.n_chunks} chunks): "
          f"end to end {st.n_distinct / wall:8.1f} texts/s wall, "
          f"{st.n_distinct / cpu:8.1f} texts per CPU-second")
    t0 = time.perf_counter()
    again = EmbedStats()
    embed_texts(texts, encoder, work_dir, chunk_size=1024, stats=again)
    print(f"{'':10s} rerun on the finished work dir: {again.n_encoded} embedded, "
          f"{again.n_reused} reused, {time.perf_counter() - t0:.2f} s")


class NullEncoder:
    """Returns zeros at once: what is left is the pipeline's own cost (hash, dedup, chunks)."""

    dim, batch_size = 256, 1024

    def describe(self) -> dict:
        return {"model": "null", "dim": self.dim}

    def encode(self, texts, batch_size=None, on_batch=None):
        return np.zeros((len(texts), self.dim), np.float32)


def overhead(n: int, work_dir: pathlib.Path) -> None:
    texts = [f"response number {i % (n // 2)} " + "x" * 400 for i in range(n)]  # half duplicates
    st = EmbedStats()
    t0 = time.perf_counter()
    embed_texts(texts, NullEncoder(), work_dir, chunk_size=4096, stats=st)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    embed_texts(texts, NullEncoder(), work_dir, chunk_size=4096)
    print(f"pipeline overhead (null encoder, {n:,} texts of ~420 chars, {st.n_distinct:,} distinct, "
          f"D=256): {first:.2f} s with {st.n_chunks} chunk writes; {time.perf_counter() - t0:.2f} s "
          "to reload from the work dir")


def resume(table: pathlib.Path, model: pathlib.Path, out: pathlib.Path, chunk_size: int) -> None:
    cmd = [sys.executable, "-m", "pluralign.cli", "embed", f"input={table}", f"output={out}",
           "user=objective", "a=chosen", "b=rejected", "label=null", "prompt=prompt",
           "encoder=hf", f"encoder.model={model}", "encoder.max_length=256", "encoder.device=cpu",
           f"chunk_size={chunk_size}", "progress=false", "keep_work_dir=true"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    work = out.with_name(out.name + ".partial")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.perf_counter()
    while len(list(work.glob("chunk-*.npz"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = time.perf_counter() - t0
    chunks = len(list(work.glob("chunk-*.npz")))
    tmp = len(list(work.glob(".tmp-*")))
    print(f"resume: killed (SIGKILL) after {killed_at:.1f} s with {chunks} chunk files "
          f"(+{tmp} unfinished temp file(s), ignored) of {chunk_size} texts")
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr)
    meta = json.loads((out / "meta.json").read_text())
    e = meta["embed"]
    print(f"resume: rerun took {time.perf_counter() - t0:.1f} s: {e['texts']} distinct texts, "
          f"{e['reused_from_work_dir']} reused from the killed run, {e['encoded']} embedded now; "
          f"dataset validates: {out}")


def main() -> None:
    args = parse_args(__doc__, data=DEFAULT_DATA, rows=(2000, "HH-RLHF rows (3 texts each)"), tiny_texts=1200)

    with gzip.open(args.data, "rt") as f:
        rows = [json.loads(line) for _, line in zip(range(args.rows), f)]
    texts = [r[k] for r in rows for k in ("prompt", "chosen", "rejected")]
    lengths = np.array([len(t) for t in texts])
    print(f"{len(texts)} HH-RLHF texts, {len(set(texts))} distinct, "
          f"median {int(np.median(lengths))} chars, p90 {int(np.percentile(lengths, 90))}")
    import torch
    print(f"torch threads: {torch.get_num_threads()}, cpu count: {os.cpu_count()}, "
          f"load average (1 min) at start: {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = pathlib.Path(tmp_dir)
        overhead(200_000, tmp / "w0")
        throughput("wordllama", load_encoder("wordllama"), texts, tmp / "w1")
        model = save_tiny_llama(tmp)
        tiny = load_encoder("hf", model=str(model), max_length=256, device="cpu")
        throughput("tiny-llama", tiny, texts[:args.tiny_texts], tmp / "w2")

        table = tmp / "hh.jsonl"
        with open(table, "w") as f:
            for r in rows[: max(1, args.tiny_texts // 3)]:
                f.write(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected", "objective")}) + "\n")
        resume(table, model, tmp / "hh_ds", chunk_size=128)

        from pluralign.data import read_dataset
        ds = read_dataset(tmp / "hh_ds")
        print(f"resumed dataset: {ds.n_items} items, {ds.n_prompts} prompts, "
              f"{len(ds.comparisons)} comparisons, {ds.n_users} users, encoder {ds.meta['encoder']['model']}")


if __name__ == "__main__":
    main()
