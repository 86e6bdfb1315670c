"""Benchmark: `pluralign serve` against the same scoring in-process (issue 23).

    python scripts/bench_serve.py [--batches 64 256] [--repeats 5] [--requests 100]

Builds a PAL-A run over WordLlama text embeddings (random θ: speed does not depend on training;
256-d `l2_supercat`, 100 seen users), starts `python -m pluralign.serve.cli RUN --port 0` on
127.0.0.1, and measures, for B OpenRLHF samples (templated prompt + response texts, a seen
user each):
  - in-process: completions/s of `openrlhf.reward_func(queries, prompts, labels)` (encode + score,
    one call), best of `repeats`;
  - server, one request: completions/s of one `POST /get_reward` holding the B samples, and its
    ratio to in-process — the server's overhead (JSON, HTTP, the batcher's thread hop);
  - server, one request per sample (as OpenRLHF sends them): B single-sample requests from 8
    concurrent clients, completions/s (the batcher merges them) and the ratio to in-process;
  - latency under 8 concurrent clients: p50 / p99 ms of single-sample requests, `requests` per
    client.
Ratios are taken within this run on this machine; the client shares the machine's cores with the server.
"""

from __future__ import annotations

import concurrent.futures
import os
import select
import subprocess
import sys
import tempfile
import time

import httpx
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pluralign.config import model_config
from pluralign.embed.encoders import load_encoder
from pluralign.export import save_model
from pluralign.integrations import openrlhf
from pluralign.models import REGISTRY, base
from pluralign.train.trainer import init_params

from bench_args import parse_args
from bench_reward import timed

WORDS = ("rice water simmer gravity wave salt wind child earth pull answer short long plain poetry facts "
         "please explain write cook boil minutes sea foam gull voice falls because curvature space time").split()
CLIENTS = 8


def build(root: str, n_users: int = 100) -> str:
    encoder = load_encoder("wordllama")
    config, dims = model_config("pal_a"), base.Dims(dim=encoder.dim, n_users=n_users)
    graphdef, params = init_params(REGISTRY["pal_a"][0], config, dims, jax.random.PRNGKey(0)[None])  # one seed
    model = nnx.merge(graphdef, jax.tree.map(lambda x: x[0], params))
    states = model.user_table_state(jnp.arange(n_users))[None]  # [1 seed, U, S]
    save_model(os.path.join(root, "model"), model_config=config, dims=dims, params=params, seen_states=states, seeds=[0],
               dataset_meta={"name": "bench_serve", "n_users": n_users, "encoder": encoder.describe()},
               seen_users=np.arange(n_users))
    return root


def samples(rng: np.random.Generator, B: int, n_users: int = 100) -> tuple[list, list, list]:
    text = lambda n: " ".join(rng.choice(WORDS, n))  # noqa: E731
    prompts = [f"<|user|>\n{text(12)}\n<|assistant|>\n" for _ in range(B)]
    return [p + text(40) for p in prompts], prompts, [int(u) for u in rng.integers(0, n_users, B)]


def start_server(run_dir: str, max_batch: int):
    proc = subprocess.Popen([sys.executable, "-m", "pluralign.serve.cli", run_dir, "--port", "0", "--max-batch", str(max_batch),
                             "--answers", os.path.join(run_dir, "bench_answers.jsonl")], stdout=subprocess.PIPE, text=True)
    deadline, line = time.monotonic() + 300, ""
    while "listening on" not in line:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the server did not start (exit {proc.poll()})")
        if select.select([proc.stdout], [], [], 1.0)[0]:
            line = proc.stdout.readline()
    return proc, line.split("listening on ")[1].split()[0]


def concurrently(clients: list[httpx.Client], bodies: list[dict]) -> list[float]:
    """Posts every body, one request each, from the clients' threads at once -> per-request seconds."""
    def post_all(http: httpx.Client, part: list[dict]) -> list[float]:
        out = []
        for body in part:
            t0 = time.perf_counter()
            http.post("/get_reward", json=body).raise_for_status()
            out.append(time.perf_counter() - t0)
        return out

    n = len(clients)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return [t for part in pool.map(post_all, clients, [bodies[i::n] for i in range(n)]) for t in part]


def main() -> None:
    args = parse_args(__doc__, batches=[64, 256], repeats=5, requests=(100, "single-sample requests per client for the latency"))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores visible")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        run_dir = build(root)
        openrlhf.configure(run_dir)
        proc, url = start_server(run_dir, max_batch=max(args.batches))
        clients = []
        try:
            # Clients made once (an httpx.Client costs milliseconds to make), each keeping its connection.
            clients = [httpx.Client(base_url=url, timeout=120) for _ in range(CLIENTS)]
            with httpx.Client(base_url=url, timeout=120) as http:
                for B in args.batches:
                    queries, prompts, labels = samples(rng, B)
                    body = {"query": queries, "prompts": prompts, "labels": labels}
                    singles = [{"query": [q], "prompts": [p], "labels": [u]} for q, p, u in zip(queries, prompts, labels)]
                    openrlhf.reward_func(queries, prompts, labels)  # compile and load the encoder
                    t_in = timed(lambda: openrlhf.reward_func(queries, prompts, labels), args.repeats)
                    http.post("/get_reward", json=body).raise_for_status()  # the server's compile for this batch size
                    t_one = timed(lambda: http.post("/get_reward", json=body).raise_for_status(), args.repeats)
                    concurrently(clients, singles)  # its compiles for the batch sizes the batcher forms
                    t_each = timed(lambda: concurrently(clients, singles), args.repeats)
                    print(f"B={B:4d}: in-process {B / t_in:8,.0f} completions/s ({t_in * 1e3:6.1f} ms)   "
                          f"server, one request {B / t_one:8,.0f}/s ({t_one * 1e3:6.1f} ms, {t_in / t_one:.2f}x in-process)   "
                          f"server, {B} single-sample requests from {CLIENTS} clients {B / t_each:8,.0f}/s "
                          f"({t_in / t_each:.2f}x in-process)")
                queries, prompts, labels = samples(rng, CLIENTS * args.requests)
                latencies = np.asarray(concurrently(clients, [{"query": [q], "prompts": [p], "labels": [u]}
                                                          for q, p, u in zip(queries, prompts, labels)]))
                health = http.get("/health").json()
            print(f"latency, {CLIENTS} concurrent clients x {args.requests} single-sample requests: "
                  f"p50 {np.percentile(latencies, 50) * 1e3:.1f} ms, p99 {np.percentile(latencies, 99) * 1e3:.1f} ms; "
                  f"the server scored {health['samples']} samples in {health['batches']} model calls "
                  f"({health['samples'] / health['batches']:.1f} per call)")
        finally:
            for client in clients:
                client.close()
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
