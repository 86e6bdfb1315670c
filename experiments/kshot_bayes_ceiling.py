"""The k-shot Bayes ceiling of `data=shared_plus_low_rank`: how well any method can do from k answers.

Command:   python experiments/kshot_bayes_ceiling.py [--users 500] [--samples 20000]
Runtime:   ~1 minute on 2 busy CPU cores.
Expected:  (default generator, seed 0) the true model with the user's own parameters (the reported
           Bayes-optimal accuracy) 0.880; the exact Bayesian user from k random shots 0.781 / 0.787 /
           0.806 / 0.828 / 0.847 at k = 1 / 2 / 5 / 10 / 20.

The dataset's Bayes-optimal accuracy scores the true model *with each user's true parameters*
(v_u, β_u); a new user seen through k noisy answers cannot reach it. This computes the best any
method can do from k answers: the exact Bayesian user who knows everything but v_u and β_u (the
true item coordinates, the shared reward, the deviation directions and the generator's prior on
v_u and β_u), its posterior over (v_u, β_u) from the k support answers by importance sampling
from the prior, predicting the query with the posterior-predictive probability. Episodes as in
`random` mode: the query a random half of the user's comparisons, the support the first k of the
rest; accuracy is the expected one under the true P (as the Bayes-optimal figure).
"""

from __future__ import annotations

import argparse

import numpy as np

from pluralign.data.low_rank import SharedPlusLowRankConfig, sample_sharpness, user_pairs
from pluralign.data.synthetic import embed_hidden

SHOTS = (1, 2, 5, 10, 20)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=500, help="users scored (every other one of the generator's)")
    parser.add_argument("--samples", type=int, default=20000, help="prior samples for importance sampling")
    args = parser.parse_args()
    c = SharedPlusLowRankConfig()
    # Replays make_shared_plus_low_rank's random draws in its order to recover the hidden truth.
    rng = np.random.default_rng(c.seed)
    z = rng.standard_normal((c.n_items, 1 + c.rank))
    embed_hidden(rng, z, c.dim, c.nuisance_scale)
    v = c.deviation_scale * rng.standard_normal((c.n_users, c.rank))
    beta = sample_sharpness(rng, c.sharpness_spread, c.n_users)
    user = np.repeat(np.arange(c.n_users), c.comparisons_per_user)
    a, b = user_pairs(rng, c)
    dz = z[a] - z[b]
    shared, deviation = c.shared_scale * dz[:, 0], dz[:, 1:]
    p = sigmoid(beta[user] * (shared + np.einsum("nr,nr->n", deviation, v[user])))
    label = rng.random(len(p)) < p

    prior_rng = np.random.default_rng(1)
    V = c.deviation_scale * prior_rng.standard_normal((args.samples, c.rank))
    B = sample_sharpness(prior_rng, c.sharpness_spread, args.samples)
    step = max(1, c.n_users // args.users)
    accuracy, oracle = {k: [] for k in SHOTS}, []
    for u in range(0, c.n_users, step):
        rows = np.random.default_rng(u).permutation(np.flatnonzero(user == u))
        n_query = (len(rows) + 1) // 2
        query, pool = rows[:n_query], rows[n_query:]
        oracle.append(np.mean(np.maximum(p[query], 1 - p[query])))
        query_logits = B[:, None] * (shared[query][None] + V @ deviation[query].T)  # [M, Q]
        for k in SHOTS:
            s = pool[:k]
            logits = B[:, None] * (shared[s][None] + V @ deviation[s].T)  # [M, k]
            loglik = np.sum(np.where(label[s][None], -np.logaddexp(0, -logits), -np.logaddexp(0, logits)), axis=1)
            w = np.exp(loglik - loglik.max())
            p_hat = (w / w.sum()) @ sigmoid(query_logits)
            accuracy[k].append(np.mean(np.where(p_hat > 0.5, p[query], 1 - p[query])))
    print(f"true model with each user's parameters (Bayes-optimal): {np.mean(oracle):.3f}")
    print("exact Bayesian user from k random shots: " + " / ".join(f"k={k} {np.mean(accuracy[k]):.3f}" for k in SHOTS))


if __name__ == "__main__":
    main()
