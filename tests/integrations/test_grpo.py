"""TRL itself, not a reproduction of its calls: two GRPO steps of a tiny GPT-2 on CPU with the
pluralign reward function (pickled and unpickled first, as async GRPO ships it), and every reward
TRL received is `trained.reward()`'s for the same prompt, completion and dataset-row user."""

from __future__ import annotations

import pathlib
import pickle

import numpy as np
import pytest

import pluralign
from pluralign.integrations.trl import reward_function
from tests.text_run import text_run

WORDS = "rice sea gravity waves foam salt wind gull boil water wait earth pulls things fall down".split()


def text_artifact(root: pathlib.Path) -> pathlib.Path:
    """A PAL-A run over 64-d WordLlama text embeddings, users with string ids (random θ: what is
    tested is that TRL gets the library's rewards, not what they are)."""
    return text_run(root / "grpo_run", n_users=8, n_items=30, comparisons_per_user=6)[0]


def tiny_policy():
    """A randomly initialised 1-layer GPT-2 and a word-level tokenizer over WORDS, built in code."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", "the", "is"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                        bos_token_id=2, eos_token_id=2, pad_token_id=0)
    return GPT2LMHeadModel(config), PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                            unk_token="<unk>")


class Recorded:
    """Wraps a reward function, keeping what TRL passed in and what it got back."""

    def __init__(self, fn):
        self.fn, self.__name__, self.calls = fn, fn.__name__, []

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kwargs):
        rewards = self.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        self.calls.append({"prompts": list(prompts), "completions": list(completions), "user_id": list(kwargs["user_id"]),
                           "kwargs": sorted(kwargs), "rewards": list(rewards)})
        return rewards


@pytest.mark.slow
def test_grpo_steps_with_trl_get_the_library_rewards(tmp_path):
    trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'pluralign[rlhf]')")
    from datasets import Dataset

    run_dir = text_artifact(tmp_path)
    trained = pluralign.load(run_dir)
    seen = [u for u, s in zip(trained.users["user_id"], trained.users["split"]) if s == "seen"]
    users = [seen[0], seen[1], "someone-new"]  # an unknown user gets the population's reward
    prompts = ["the sea is", "the rice is", "gravity is"]
    dataset = Dataset.from_dict({"prompt": [prompts[i % 3] for i in range(6)], "user_id": [users[i % 3] for i in range(6)]})
    fn = pickle.loads(pickle.dumps(reward_function(run_dir)))  # as async GRPO ships it to a worker
    recorded = Recorded(fn)
    model, tokenizer = tiny_policy()
    args = trl.GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=2, per_device_train_batch_size=4, num_generations=2,
                          max_completion_length=6, learning_rate=1e-3, use_vllm=False, bf16=False, use_cpu=True,
                          report_to="none", logging_steps=1, save_strategy="no", seed=0, shuffle_dataset=False)
    trainer = trl.GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=[recorded], args=args, train_dataset=dataset)
    trainer.train()

    assert len(recorded.calls) == 2
    row_user = dict(zip(prompts, users))
    reward = trained.reward()
    n = 0
    for call in recorded.calls:
        assert {"trainer_state", "log_metric", "log_extra", "user_id"} <= set(call["kwargs"])
        assert len(call["rewards"]) == len(call["completions"]) == len(call["prompts"]) == 4
        for prompt, completion, user, got in zip(call["prompts"], call["completions"], call["user_id"], call["rewards"]):
            assert user == row_user[prompt]  # the dataset row's user reached the reward with its completion
            want = float(reward(prompt, [completion], user if user in seen else population_user(reward))[0])
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
            n += 1
    assert n == 8
    unknown = sum(u == "someone-new" for c in recorded.calls for u in c["user_id"])
    assert unknown > 0 and fn.unknown_count == unknown  # the unknown user was scored, and counted


def population_user(reward):
    """The population's user: a new user with no answers."""
    from pluralign.export import Support

    empty = np.zeros((0, reward.dim), np.float32)
    return Support(e_a=empty, e_b=empty)
