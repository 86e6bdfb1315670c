"""Multi-objective reward heads: attribute regression, verbosity decorrelation, arithmetic control.

The first stage of ArmoRM (Wang et al., 2024, "Interpretable Preferences via
Multi-Objective Reward Modeling and Mixture-of-Experts"; RLHFlow/RLHF-Reward-Modeling
`armo-rm/stage-1_train.py`) and the reward space of DPA ("Arithmetic Control of LLMs
for Diverse User Preferences", Wang et al., 2024), on frozen embeddings:

    r(y) ∈ R^m regressed on per-item attribute ratings (NaN = missing, masked)
      ridge:  per attribute j, w_j = argmin Σ_{i observed} (y_ij − b_j − e_iᵀ w_j)² + α_j ‖w_j‖²,
              α_j chosen by validation MSE on held-out items (closed form);
      MLP:    r = MLP(e_y), masked MSE, optax AdamW, the best-validation step kept.
    decorrelation:  r'_i = r_i − λ_i r_v, λ_i the smallest |λ| with |ρ_S(r'_i, r_v)| ≤ threshold
                    (Spearman on a reference set); r' = r T with T = I − e_v λᵀ.
    arithmetic control: a direction v ∈ S^{m−1} (for two attributes, v = cos θ e_i + sin θ e_j)
                    ranks responses by vᵀ r'; best-of-n keeps the top one.

Deviations from the ArmoRM code: the ridge has an unpenalised intercept (fit_intercept=False
there, on LLM embeddings; our ratings are not centred) and is refitted on all training items
with the chosen α; λ is found by bisection instead of a fixed grid, on |ρ| rather than ρ; the
verbosity objective itself keeps λ_v = 0 (ArmoRM's transform zeroes it) so that a user or a
caller can still ask for verbosity.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pluralign.models.base import MLP
from pluralign.numerics import optimizer_update

DEFAULT_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)  # ArmoRM's grid


def split_items(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (fit, val) split of n rows for choosing a penalty or a step."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"regression validation fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def ridge_solution(x: np.ndarray, y: np.ndarray, alphas) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with an unpenalised intercept for each α: ([A, D] weights, [A] intercepts).

    With centred X̃ = X − x̄ and ỹ = y − ȳ: w = (X̃ᵀX̃ + α I)⁻¹ X̃ᵀ ỹ and b = ȳ − x̄ᵀ w. One
    eigendecomposition X̃ᵀX̃ = Q diag(s) Qᵀ serves every α: w = Q diag(1/(s + α)) Qᵀ X̃ᵀ ỹ.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean()
    xc = x - x_mean
    s, q = np.linalg.eigh(xc.T @ xc)
    proj = q.T @ (xc.T @ (y - y_mean))  # [D]
    alphas = np.asarray(alphas, np.float64)
    w = (proj[None, :] / (np.maximum(s, 0.0)[None, :] + alphas[:, None])) @ q.T  # [A, D]
    return w, y_mean - w @ x_mean


@dataclasses.dataclass
class RidgeHeads:
    kernel: np.ndarray  # [D, m]
    bias: np.ndarray  # [m]
    alpha: np.ndarray  # [m] penalty chosen on validation items
    val_mse: np.ndarray  # [m] validation MSE at that penalty


def fit_ridge_heads(x: np.ndarray, attributes: np.ndarray, alphas=DEFAULT_ALPHAS, *, val_fraction: float = 0.2, seed: int = 0) -> RidgeHeads:
    """One ridge per attribute on its observed rows, α per attribute by validation MSE,
    then refitted with that α on every observed row."""
    fit, val = split_items(x.shape[0], val_fraction, seed)
    m = attributes.shape[1]
    kernel, bias = np.zeros((x.shape[1], m)), np.zeros(m)
    chosen, val_mse = np.zeros(m), np.zeros(m)
    for j in range(m):
        observed = ~np.isnan(attributes[:, j])
        f, v = fit[observed[fit]], val[observed[val]]
        if len(f) < 2 or len(v) < 1:
            raise ValueError(f"attribute {j}: too few observed ratings to fit and validate a ridge ({observed.sum()})")
        w, b = ridge_solution(x[f], attributes[f, j], alphas)
        mse = np.mean(np.square(x[v] @ w.T + b[None, :] - attributes[v, j][:, None]), axis=0)  # [A]
        best = int(np.argmin(mse))
        chosen[j], val_mse[j] = alphas[best], mse[best]
        w_all, b_all = ridge_solution(x[observed], attributes[observed, j], [alphas[best]])
        kernel[:, j], bias[j] = w_all[0], b_all[0]
    return RidgeHeads(kernel=kernel, bias=bias, alpha=chosen, val_mse=val_mse)


def masked_mse(pred: jax.Array, ratings: jax.Array, observed: jax.Array) -> jax.Array:
    """Mean squared error over observed entries only; missing ratings contribute nothing."""
    sq = jnp.where(observed, jnp.square(pred - jnp.where(observed, ratings, 0.0)), 0.0)
    return sq.sum() / jnp.maximum(observed.sum(), 1).astype(sq.dtype)


def fit_mlp_head(
    x: np.ndarray, attributes: np.ndarray, hidden: tuple[int, ...], *, steps: int = 500, learning_rate: float = 3e-3,
    weight_decay: float = 1e-4, val_fraction: float = 0.2, seed: int = 0,
) -> tuple[MLP, float]:
    """Full-batch AdamW on the masked MSE; returns (the MLP at its best validation step, that
    validation MSE). One lax.scan, so the whole fit is one dispatch."""
    fit, val = split_items(x.shape[0], val_fraction, seed)
    graphdef, state = nnx.split(MLP(x.shape[1], tuple(hidden), attributes.shape[1], rngs=nnx.Rngs(seed)))
    tables = {
        name: (jnp.asarray(x[rows], jnp.float32), jnp.asarray(attributes[rows], jnp.float32), ~jnp.isnan(jnp.asarray(attributes[rows])))
        for name, rows in (("fit", fit), ("val", val))
    }
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)

    def mse(state, data):
        xs, ys, observed = data
        return masked_mse(nnx.merge(graphdef, state)(xs), ys, observed)

    def step(carry, _):
        state, opt_state, best_state, best_val = carry
        grads = jax.grad(mse)(state, tables["fit"])
        updates, opt_state = optimizer_update(tx, grads, opt_state, state)
        state = optax.apply_updates(state, updates)
        val_mse = mse(state, tables["val"])
        better = val_mse < best_val
        best_state = jax.tree.map(lambda n, o: jnp.where(better, n, o), state, best_state)
        return (state, opt_state, best_state, jnp.minimum(val_mse, best_val)), None

    init = (state, tx.init(state), state, mse(state, tables["val"]))
    (_, _, best_state, best_val), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(init)
    return nnx.merge(graphdef, best_state), float(best_val)


def masked_r2(pred: np.ndarray, ratings: np.ndarray) -> np.ndarray:
    """[m] coefficient of determination per attribute over its observed ratings."""
    out = np.zeros(ratings.shape[1])
    for j in range(ratings.shape[1]):
        observed = ~np.isnan(ratings[:, j])
        y = ratings[observed, j]
        out[j] = 1.0 - np.sum(np.square(pred[observed, j] - y)) / np.sum(np.square(y - y.mean()))
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    import scipy.stats  # here, not at module level: importing scipy.stats costs ~1 s, on every `import pluralign.models`

    return float(scipy.stats.spearmanr(x, y)[0])


def decorrelation_penalties(
    rewards: np.ndarray, verbosity_index: int, threshold: float, *, max_penalty: float = 10.0, iterations: int = 40
) -> np.ndarray:
    """[m] λ: for each i ≠ v the smallest |λ_i| with |ρ_S(r_i − λ_i r_v, r_v)| ≤ threshold on the
    reference rewards [N, m] (bisection: the rank correlation falls as λ grows); λ_v = 0.

    The bisection aims at 0.95·threshold: at exactly the threshold, float32 rounding of r T at
    inference can swap a near-tie and land a hair above it."""
    if threshold <= 0:
        raise ValueError(f"decorrelation threshold must be > 0, got {threshold}")
    r_v = rewards[:, verbosity_index]
    target = 0.95 * threshold
    penalties = np.zeros(rewards.shape[1])
    for i in range(rewards.shape[1]):
        rho0 = spearman(rewards[:, i], r_v)
        if i == verbosity_index or abs(rho0) <= threshold:
            continue
        sign = np.sign(rho0)
        # g(λ) = sign·ρ(sign·λ) falls from |ρ0| > threshold towards −1 as λ ≥ 0 grows.
        g = lambda lam: sign * spearman(rewards[:, i] - sign * lam * r_v, r_v)
        lo, hi = 0.0, max_penalty
        if g(hi) > target:
            raise ValueError(f"attribute {i}: no penalty up to {max_penalty} decorrelates it from attribute {verbosity_index}")
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if g(mid) <= target else (mid, hi)
        penalties[i] = sign * hi
    return penalties


def reward_transform(penalties: np.ndarray, verbosity_index: int) -> np.ndarray:
    """[m, m] T with r' = r T, i.e. r'_i = r_i − λ_i r_v (ArmoRM's reward_transform_matrix)."""
    transform = np.eye(len(penalties))
    transform[verbosity_index, :] -= penalties
    return transform


def direction_from_angle(angle_degrees: float, n_attributes: int, first: int, second: int) -> np.ndarray:
    """[m] unit direction cos θ e_first + sin θ e_second (DPA's angle between two objectives)."""
    theta = np.deg2rad(angle_degrees)
    v = np.zeros(n_attributes)
    v[first], v[second] = np.cos(theta), np.sin(theta)
    return v


def best_of_n_from_rewards(rewards: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """[P, n, m] attribute rewards of n candidates for P prompts, a direction [m] -> [P] index of
    the candidate with the highest vᵀ r'."""
    return np.argmax(np.einsum("pnm,m->pn", rewards, direction), axis=1)


def angle_sweep(rewards: np.ndarray, true_attributes: np.ndarray, angles, first: int, second: int) -> np.ndarray:
    """Best-of-n under v(θ) = cos θ e_first + sin θ e_second for each angle: the mean true
    attributes [len(angles), m] of the chosen responses. rewards, true_attributes: [P, n, m]."""
    m = rewards.shape[-1]
    out = []
    for angle in angles:
        chosen = best_of_n_from_rewards(rewards, direction_from_angle(angle, m, first, second))  # [P]
        out.append(true_attributes[np.arange(len(chosen)), chosen].mean(axis=0))
    return np.stack(out)
