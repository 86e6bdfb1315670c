"""Texts are accepted wherever embeddings are (issue 23 item 5), embedded with the run's encoder:
a `Support`, `OnlineUser.add`, the batched call, the JAX policy hook and the PyTorch one give the
same numbers (1e-6) as passing the texts' embeddings; torch tensors work in the torch hook."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import pluralign
from pluralign.errors import InputError
from pluralign.export import OnlineUser, Support
from tests.export.helpers import HashEncoder

ENC = HashEncoder()
A = ["a calm answer", "a short one", "a long answer with detail", "a rude answer"]
B = ["a wrong answer", "a rambling one", "a terse answer", "a kind answer"]
PROMPTS = ["how do I sort a list?", "what is a monad?"]


def emb(texts):
    return ENC.encode(texts)


def seen_user(reward):
    return reward.trained.users["user_id"][int(reward.trained.seen_users[0])]


def test_support_of_texts_is_the_support_of_their_embeddings(pal_a_reward):
    labels = [1.0, 0.0, 0.7, 1.0]
    by_text = pal_a_reward.infer(Support(e_a=A, e_b=B, label=labels, e_x=PROMPTS[0]))
    by_embedding = pal_a_reward.infer(Support(e_a=emb(A), e_b=emb(B), label=labels, e_x=emb(PROMPTS[:1])[0]))
    np.testing.assert_allclose(by_text, by_embedding, rtol=1e-6, atol=1e-6)
    per_comparison = pal_a_reward.infer(Support(e_a=A, e_b=B, label=labels, e_x=[PROMPTS[0]] * 4))
    np.testing.assert_allclose(per_comparison, by_embedding, rtol=1e-6, atol=1e-6)
    assert len(Support(e_a=A, e_b=B)) == 4 and len(Support(e_a="one", e_b="two")) == 1


def test_online_user_adds_texts(pal_a_reward):
    by_text, by_embedding = OnlineUser(pal_a_reward, n_samples=4), OnlineUser(pal_a_reward, n_samples=4)
    for a, b in zip(A[:2], B[:2]):
        s_text = by_text.add(a, b, label=1.0, e_x=PROMPTS[1])
        s_emb = by_embedding.add(emb([a])[0], emb([b])[0], label=1.0, e_x=emb([PROMPTS[1]])[0])
        np.testing.assert_allclose(s_text, s_emb, rtol=1e-6, atol=1e-6)
    gains_text = by_text.information_gain(A, B, e_x=PROMPTS[1])
    assert gains_text.shape == (4,) and np.all(np.isfinite(gains_text))


def test_batched_call_and_policy_hooks_take_texts(pal_a_reward):
    users = [seen_user(pal_a_reward)] * 2
    responses = [A[:3], B[:3]]  # B = 2 prompts, N = 3 responses each
    by_text = pal_a_reward(PROMPTS, responses, users)
    by_embedding = pal_a_reward(emb(PROMPTS), np.stack([emb(r) for r in responses]), users)
    assert by_text.shape == (2, 3)
    np.testing.assert_allclose(by_text, by_embedding, rtol=1e-6, atol=1e-6)
    # The JAX hook: texts outside jit, embeddings inside.
    hook = pal_a_reward.policy_reward_fn(users[0])
    expected = np.asarray(jax.jit(hook)(emb(PROMPTS), emb(A[:2])))
    np.testing.assert_allclose(hook(PROMPTS, A[:2]), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(expected, pal_a_reward(emb(PROMPTS), emb(A[:2])[:, None], users)[:, 0], rtol=1e-6, atol=1e-6)
    best, scores = pal_a_reward.best_of_n(PROMPTS[0], A, users[0])
    np.testing.assert_allclose(scores, pal_a_reward(emb(PROMPTS[:1])[0], emb(A), users[0]), rtol=1e-6, atol=1e-6)


def test_torch_hook_takes_tensors_and_texts(pal_a_reward):
    torch = pytest.importorskip("torch")
    user = seen_user(pal_a_reward)
    fn = pal_a_reward.torch_reward_fn(user)
    expected = np.asarray(pal_a_reward(emb(PROMPTS), emb(A[:2])[:, None], [user] * 2))[:, 0]
    prompts = torch.tensor(emb(PROMPTS), dtype=torch.float64)
    responses = torch.tensor(emb(A[:2]), requires_grad=True)  # a policy's tensor, grad attached
    r = fn(prompts, responses)
    assert isinstance(r, torch.Tensor) and r.dtype == torch.float32 and r.shape == (2,) and r.device == responses.device
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fn(PROMPTS, A[:2]).numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fn(None, A[:2]).numpy(), np.asarray(pal_a_reward(None, emb(A[:2]), user)), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match=r"responses: expected a \[B, D\] tensor"):
        fn(None, torch.zeros(2, 3, 8))


def test_texts_are_embedded_with_their_prompt_where_the_run_embedded_items_so(pal_a_artifact):
    """A run whose items were (prompt, response) conversations (`embed_with_prompt`): response texts
    are embedded together with their prompt text, as in training, and without one it is an error."""
    trained = pluralign.load(pal_a_artifact[0])
    trained = dataclasses.replace(trained, dataset_meta={**trained.dataset_meta, "embed_with_prompt": True})
    reward = trained.reward(capacity=8, encoder=HashEncoder())
    user = seen_user(reward)
    pairs = [(PROMPTS[0], a) for a in A]
    np.testing.assert_allclose(reward(PROMPTS[0], A, user), reward(emb(PROMPTS[:1])[0], emb(pairs), user), rtol=1e-6, atol=1e-6)
    by_text = reward.infer(Support(e_a=A, e_b=B, e_x=PROMPTS[0]))
    by_embedding = reward.infer(Support(e_a=emb(pairs), e_b=emb([(PROMPTS[0], b) for b in B]), e_x=emb(PROMPTS[:1])[0]))
    np.testing.assert_allclose(by_text, by_embedding, rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="responses: this model's items were embedded together with their prompts"):
        reward(None, A, user)
