"""A personalized policy with TRL's GRPO: one tiny language model trained against a pluralign
reward, each prompt's completions scored for the user of its dataset row.

    python examples/grpo_personalized.py [--run-dir runs/grpo_words] [--steps 4]
    python examples/grpo_personalized.py --server http://127.0.0.1:8000   # score through `pluralign serve`

1. Trains (or loads) a PAL-A reward on a made-up comparisons table of short texts built from two
   word lists: half of the 100 users prefer texts with more *nature* words (sea, rain, tree, ...),
   the other half texts with more *tech* words (code, server, bug, ...). Texts are embedded with
   the offline WordLlama encoder (no download); a few minutes on a laptop CPU.
2. Builds a tiny GPT-2 from a config in code (random weights) with a word-level tokenizer over the
   same words (`tokenizers` wrapped in `PreTrainedTokenizerFast`; no hub), and runs a few GRPO steps
   on CPU, its dataset rows alternating between a nature user and a tech user.
3. Shows the two users' rewards for the same completions: the nature user's reward rises with a
   completion's share of nature words, the tech user's falls.

It prints the reward calls' share of the training time. The reward is warmed up with one call
before training (the encoder's load and the first compile, ~0.6-1 s here); `--no-warm-up` leaves
that to the first GRPO step. Measured on a shared 2-core CPU: 1-3 % of training warm (in-process
or `--server`), about 20 % of a 4-step run cold, all of it the first call.

With --server, the reward comes from a running `pluralign serve RUN` through
`pluralign.integrations.http.HTTPRewardFunction` (OpenRLHF's `/get_reward` JSON) instead of the run
loaded in this process.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import numpy as np

import pluralign
from pluralign.data.importers import ComparisonsTableConfig
from pluralign.evaluate.fewshot import EvalConfig
from pluralign.models.pal import PALConfig
from pluralign.run import RunConfig, run
from pluralign.train.trainer import TrainConfig

NATURE = "sea rain tree river leaf forest bird flower stone moon".split()
TECH = "code data server network bug compiler laptop robot chip cable".split()
WORDS = NATURE + TECH
TEXT_LENGTH = 6  # words per text of the comparisons table
BATCH_SIZE = 2  # completions per GRPO step, all scored in one reward call


def nature_share(text: str) -> float:
    """The share of a text's words that are nature words (0 for a text with no known word)."""
    words = [w for w in text.split() if w in WORDS]
    return sum(w in NATURE for w in words) / len(words) if words else 0.0


def comparisons_table(path: pathlib.Path, n_users: int = 100, per_user: int = 40, seed: int = 0) -> None:
    """Writes a CSV of (user, a, b, label): user `nature-i` prefers the text with more nature words,
    `tech-i` the one with more tech words (P(a ≻ b) = σ(±6 · difference of nature shares))."""
    import csv

    rng = np.random.default_rng(seed)

    def text() -> str:
        n = rng.integers(0, TEXT_LENGTH + 1)
        return " ".join(rng.permutation(list(rng.choice(NATURE, n)) + list(rng.choice(TECH, TEXT_LENGTH - n))))

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user", "a", "b", "label"])
        for u in range(n_users):
            kind, sign = ("nature", 1.0) if u % 2 == 0 else ("tech", -1.0)
            for _ in range(per_user):
                a, b = text(), text()
                while b == a:
                    b = text()
                p = 1.0 / (1.0 + np.exp(-6.0 * sign * (nature_share(a) - nature_share(b))))
                writer.writerow([f"{kind}-{u // 2}", a, b, float(rng.random() < p)])


def train_or_load(run_dir: pathlib.Path):
    if not (run_dir / "model" / "model.json").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        table = run_dir / "comparisons.csv"
        comparisons_table(table)
        config = RunConfig(
            model=PALConfig(name="pal_a", n_prototypes=2, latent_dim=4),
            data=ComparisonsTableConfig(name="nature_vs_tech", path=str(table), encoder="wordllama"),
            seeds=[0],
            train=TrainConfig(progress=False, max_epochs=60, batch_size=128, learning_rate=0.02, patience=10, checkpoint=False),
            eval=EvalConfig(shots=[1, 5, 10], modes=["random"], draws=1, prior_strengths=[1.0, 10.0]),
            cache_dir=str(run_dir / "cache"),
        )
        results = run(config, run_dir)
        print(f"trained pal_a on {table}: seen-user accuracy {results['seen']['accuracy']:.3f}")
    return pluralign.load(run_dir)


def tiny_policy(seed: int = 0):
    """(a randomly initialised 1-layer GPT-2, its word-level tokenizer over WORDS): built here, no hub."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", "the", "is", "about"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # decodes word ids joined by spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=vocab["</s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"])
    return GPT2LMHeadModel(config), tokenizer


class Recorded:
    """A reward function that keeps every (completion, user, reward) TRL scored with it and the
    wall time of each call (picklable like the function it wraps, with the same `__name__`)."""

    def __init__(self, reward_fn, user_column: str = "user_id"):
        self.reward_fn, self.user_column, self.__name__ = reward_fn, user_column, reward_fn.__name__
        self.calls: list[tuple[list, list, list, list]] = []
        self.seconds: list[float] = []  # wall time of each call

    def __call__(self, prompts=None, completions=(), completion_ids=None, **kwargs):
        start = time.perf_counter()
        rewards = self.reward_fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        self.seconds.append(time.perf_counter() - start)
        self.calls.append((list(prompts), list(completions), list(kwargs[self.user_column]), list(rewards)))
        return rewards


def grpo(reward_fn, users: list[str], steps: int, out_dir: str) -> tuple[float, list[float]]:
    """Runs `steps` GRPO steps of the tiny policy on CPU; prompts alternate between `users`.
    Returns the seconds `trainer.train()` took and each step's (TRL's `step_time`: generation,
    reward and update)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = tiny_policy()
    prompts = ["the sea is", "the code is", "the moon is about", "the server is about"]
    dataset = Dataset.from_dict({"prompt": [prompts[i % 4] for i in range(16)], "user_id": [users[i % 2] for i in range(16)]})
    args = GRPOConfig(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=BATCH_SIZE, num_generations=2,
                      max_completion_length=8, learning_rate=1e-3, use_vllm=False, bf16=False, use_cpu=True,
                      report_to="none", logging_steps=1, save_strategy="no", seed=0)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=[reward_fn], args=args, train_dataset=dataset)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, [h["step_time"] for h in trainer.state.log_history if "step_time" in h]


def warm_up(reward_fn, user: str) -> float:
    """Scores one batch of the size GRPO's calls have, so the reward's one-off costs (the encoder's
    load, the scoring program's compile; in a server, its own) are paid before training; returns
    the seconds it took."""
    start = time.perf_counter()
    reward_fn(prompts=["the sea is"] * BATCH_SIZE, completions=["sea"] * BATCH_SIZE, user_id=[user] * BATCH_SIZE)
    return time.perf_counter() - start


def reward_share(reward_seconds: list[float], train_seconds: float, step_seconds: list[float]) -> str:
    """Two lines: the reward calls' share of the training time, in all and per step; and of the
    steps after the first (which also pays the policy's own first-call costs)."""
    spent, steps = sum(reward_seconds), len(step_seconds)
    later, later_steps = sum(reward_seconds[1:]), sum(step_seconds[1:])
    return (f"reward time {spent:.2f} s of {train_seconds:.2f} s training ({100 * spent / train_seconds:.1f} %), "
            f"per step {spent / steps:.3f} s of {train_seconds / steps:.2f} s\n"
            f"first step: reward {reward_seconds[0]:.3f} s of {step_seconds[0]:.2f} s; the {steps - 1} others: "
            f"reward {later:.3f} s of {later_steps:.2f} s ({100 * later / max(later_steps, 1e-9):.1f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/grpo_words")
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps")
    parser.add_argument("--server", default=None, help="score through a running `pluralign serve` at this URL")
    parser.add_argument("--no-warm-up", action="store_true", help="leave the reward's first call (load, compile) to training")
    args = parser.parse_args()

    trained = train_or_load(pathlib.Path(args.run_dir))
    seen = [str(u) for u, split in zip(trained.users["user_id"], trained.users["split"]) if split == "seen"]
    users = [next(u for u in seen if u.startswith(kind)) for kind in ("nature", "tech")]  # one seen user of each type
    if args.server:
        from pluralign.integrations.http import HTTPRewardFunction

        reward_fn = HTTPRewardFunction(args.server)
    else:
        from pluralign.integrations.trl import reward_function

        reward_fn = reward_function(trained)
    if not args.no_warm_up:
        print(f"reward warm-up before training: {warm_up(reward_fn, users[0]):.2f} s (the encoder's load, the first compile)")
    recorded = Recorded(reward_fn)
    with tempfile.TemporaryDirectory() as out_dir:
        train_seconds, step_seconds = grpo(recorded, users, args.steps, out_dir)
    n = sum(len(c[1]) for c in recorded.calls)
    print(f"\nGRPO: {args.steps} steps, {len(recorded.calls)} reward calls, {n} completions scored by {reward_fn.__name__}")
    print(reward_share(recorded.seconds, train_seconds, step_seconds))

    # What TRL got is the run's own reward of each completion for its row's user.
    reward = trained.reward()
    gap = max(abs(r - float(reward(p, [c], u)[0])) for call in recorded.calls for p, c, u, r in zip(*call))
    print(f"largest |reward TRL got - trained.reward()| over those completions: {gap:.1e}")

    # The same completions, scored for both users by the run itself.
    completions = sorted({c for call in recorded.calls for c in call[1]}, key=nature_share)
    prompt = "the sea is"
    both = {u: np.asarray(reward(prompt, completions, u)) for u in users}
    print(f"\nrewards of the same {len(completions)} completions (prompt {prompt!r}) for the two users:")
    print(f"   {'nature share':>12}  {users[0]:>9}  {users[1]:>9}  completion")
    for i, c in enumerate(completions):
        print(f"   {nature_share(c):12.2f}  {both[users[0]][i]:9.3f}  {both[users[1]][i]:9.3f}  {c}")
    share = np.asarray([nature_share(c) for c in completions])
    for u in users:
        print(f"correlation of {u}'s reward with the nature share: {np.corrcoef(share, both[u])[0, 1]:+.2f}")


if __name__ == "__main__":
    main()
