"""The model protocol (`PreferenceModel`): every hook the framework calls is declared on the base
class with a working default, every registered family (and its MRM variant) answers each of them,
and the framework finds them by calling them, not by probing models with getattr/hasattr, class
names or caught exceptions."""

from __future__ import annotations

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pluralign.config import model_config
from pluralign.data.synthetic import IdealPointConfig, make_ideal_point
from pluralign.export.users import describe_user_states
from pluralign.models import REGISTRY, base, ranking
from pluralign.train import meta

D, N_USERS = 8, 5
DIMS = base.Dims(dim=D, n_users=N_USERS)


class Minimal(base.PreferenceModel):
    """A newcomer's model: a linear reward and nothing else overridden."""

    logit_is_reward_difference = True

    def __init__(self, config, dims: base.Dims, *, rngs: nnx.Rngs):
        del config
        self.w = nnx.Param(jax.random.normal(rngs.params(), (dims.dim,)))

    def pair_features(self, pair):
        return (pair.e_a - pair.e_b) @ self.w[...]

    def pair_logits(self, user_state, features):
        del user_state
        return features

    def reward(self, user_state, e_x, has_prompt, e_y):
        del user_state, e_x, has_prompt
        return e_y @ self.w[...]


def _pair(n: int = 4) -> base.PairEmbeddings:
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    return base.PairEmbeddings(e_x=jax.random.normal(k[0], (n, D)), has_prompt=jnp.arange(n) % 2 == 0,
                               e_a=jax.random.normal(k[1], (n, D)), e_b=jax.random.normal(k[2], (n, D)))


def test_a_subclass_with_no_overrides_gets_working_defaults_for_every_hook():
    graphdef, params = base.init(Minimal, None, DIMS, jax.random.PRNGKey(0))
    model = nnx.merge(graphdef, params)
    assert Minimal.state_dim(None, DIMS) == model.user_state_dim == 0
    assert not model.fits_user_state and Minimal.training_context(None, 0, seed=0) is None and Minimal.has_scalar_reward
    assert not Minimal.has_latent_posterior
    same, summary = Minimal.prepare_params(None, None, np.arange(3), params)
    assert same is params and summary is None
    users = jnp.arange(3)
    assert model.user_table_state(users).shape == (3, 0) and model.population_user_state().shape == (0,)
    feats = model.pair_features(_pair())
    states = model.infer_user(jax.tree.map(lambda f: f[None], feats), jnp.ones((1, 4)), jnp.ones((1, 4)), prior_strength=1.0)
    assert states.shape == (1, 0)
    # The preference matrix: r_i − r_j, skew-symmetric, equal to the pair logits.
    items = jax.random.normal(jax.random.PRNGKey(2), (5, D))
    m = model.preference_logit_matrix(jnp.zeros((0,)), jnp.zeros((D,)), jnp.asarray(False), items)
    r = items @ model.w[...]
    np.testing.assert_allclose(m, r[:, None] - r[None, :], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m, base.pair_logit_matrix(model, jnp.zeros((0,)), jnp.zeros((D,)), jnp.asarray(False), items),
                               rtol=1e-5, atol=1e-5)
    # Latents default to the user state itself, known exactly, scored by the pair logits.
    state = jnp.zeros((4, 0))
    z = model.sample_latents(state, jax.random.PRNGKey(0), 3)
    assert z.shape == (3, 4, 0)
    np.testing.assert_array_equal(model.latent_logits(z[0], feats), model.pair_logits(state, feats))
    spaces = model.describe_user_states(jnp.zeros((3, 0)))
    assert list(spaces) == ["user_state"] and "no user state" in spaces["user_state"][1]


def _variants():
    """Every registered family, and its MRM variant where the family fits a user state."""
    out = []
    for name in sorted(REGISTRY):
        cls, _ = REGISTRY[name]
        out.append((name, cls))
        if nnx.eval_shape(lambda: cls(model_config(name), DIMS, rngs=nnx.Rngs(0))).fits_user_state:
            out.append((name, meta.meta_class(cls, meta.MetaOptions())))
    return out


VARIANTS = _variants()
IDS = [f"{name}-{cls.__name__}" for name, cls in VARIANTS]


@pytest.fixture(scope="module")
def no_attributes():
    return make_ideal_point(IdealPointConfig(n_users=N_USERS, n_items=20, comparisons_per_user=4, dim=D, seed=0))


@pytest.mark.parametrize("name,cls", VARIANTS, ids=IDS)
def test_state_dim_and_prepare_params_of_every_model(name, cls, no_attributes):
    config = model_config(name)
    model = nnx.eval_shape(lambda: cls(config, DIMS, rngs=nnx.Rngs(0)))  # shapes only: no compute
    # S is known from the class and config alone, and agrees with the built model.
    assert cls.state_dim(config, DIMS) == model.user_state_dim
    # `pluralign.run` calls prepare_params unconditionally: a no-op for every family without a
    # stage before comparison training (DPA's needs rated attributes and refuses data without;
    # bt_residual and lore fit their fixed projection of the items and say how).
    _, params = nnx.split(model)
    if name == "dpa":
        with pytest.raises(ValueError, match="attribute"):
            cls.prepare_params(config, no_attributes, np.arange(4), params)
    elif name in ("bt_residual", "lore"):
        fitted, summary = cls.prepare_params(config, no_attributes, np.arange(4), params)
        assert jax.tree.structure(fitted) == jax.tree.structure(params) and summary["n_items"] == 4
    else:
        same, summary = cls.prepare_params(config, no_attributes, np.arange(4), params)
        assert same is params and summary is None


@pytest.mark.slow
@pytest.mark.parametrize("name,cls", VARIANTS, ids=IDS)
def test_every_model_answers_every_hook(name, cls):
    config = model_config(name)
    graphdef, params = base.init(cls, config, DIMS, jax.random.PRNGKey(0))
    model = nnx.merge(graphdef, params)
    S = model.user_state_dim
    assert model.user_table_state(jnp.arange(3)).shape == (3, S)
    # User-embedding export: named spaces of U rows each, with a description.
    states = model.user_table_state(jnp.arange(N_USERS))
    spaces = describe_user_states(model, states)
    assert spaces and all(np.shape(a)[0] == N_USERS and len(text) > 20 for a, text in spaces.values())
    # The preference matrix is the model's own pairwise logit, for every model.
    items = jax.random.normal(jax.random.PRNGKey(3), (4, D))
    state = jnp.zeros((S,)) if S == 0 else model.population_user_state()
    m = ranking.preference_logit_matrix(model, state, items[0], jnp.asarray(True), items)
    pair = base.PairEmbeddings(e_x=jnp.broadcast_to(items[0], (1, D)), has_prompt=jnp.ones((1,), bool), e_a=items[1:2], e_b=items[3:4])
    np.testing.assert_allclose(m[1, 3], base.logits(model, state[None], pair)[0], rtol=1e-4, atol=1e-5)
    # The scalar-reward flag says whether `reward` can be called.
    args = (jnp.broadcast_to(state, (2, S)), jnp.zeros((2, D)), jnp.zeros((2,), bool), items[:2])
    if cls.has_scalar_reward:
        assert model.reward(*args).shape == (2,)
    else:
        with pytest.raises(NotImplementedError):
            model.reward(*args)
    # Latent-posterior models sample latents that `latent_logits` scores.
    z = model.sample_latents(jnp.broadcast_to(state, (2, S)), jax.random.PRNGKey(0), 3)  # [3, 2, L]
    assert z.shape[:2] == (3, 2)
    assert model.latent_logits(z[0], model.pair_features(_pair(2))).shape == (2,)


# Calls that probe a model for a hook or a family instead of calling a declared one.
_PROBES = ("getattr", "hasattr")
_MODEL_NAMES = {"model", "cls", "inner_class", "self.model", "self.inner", "user", "trained.model"}


def test_no_hook_is_found_by_probing_the_model():
    root = pathlib.Path(__file__).parents[2] / "pluralign"
    found = []
    for path in [*(root / "models").glob("*.py"), *(root / "export").glob("*.py"), root / "train" / "meta.py"]:
        source = path.read_text()
        found += [f"{path.name}: {probe}" for probe in ("type(model).__name__", "__class__.__name__") if probe in source]
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Call):
                continue
            if isinstance(node.func, ast.Name) and node.func.id in _PROBES and ast.unparse(node.args[0]) in _MODEL_NAMES:
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    assert not found, found
