"""BPR and its L2 term against float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np

from itemjax.objective.losses import bpr_loss, l2_penalty


def ref_bpr(pos, neg, where=None):
    total, n = 0.0, 0
    for i in range(len(pos)):
        if where is None or where[i]:
            total += np.log1p(np.exp(-(float(pos[i]) - float(neg[i]))))
            n += 1
    return total / max(n, 1)


def test_bpr_matches_reference():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(size=64) * 3, rng.normal(size=64) * 3
    np.testing.assert_allclose(bpr_loss(jnp.asarray(pos), jnp.asarray(neg)), ref_bpr(pos, neg), rtol=1e-5)
    where = rng.random(64) < 0.5
    np.testing.assert_allclose(bpr_loss(jnp.asarray(pos), jnp.asarray(neg), jnp.asarray(where)),
                               ref_bpr(pos, neg, where), rtol=1e-5)
    assert float(bpr_loss(jnp.asarray(pos), jnp.asarray(neg), jnp.zeros(64, bool))) == 0.0


def test_bpr_gradient_and_extremes():
    # d/ds_p softplus(s_n - s_p) = -sigmoid(s_n - s_p)
    pos, neg = jnp.array([0.0, 100.0, -100.0]), jnp.array([0.0, -100.0, 100.0])
    g = jax.grad(lambda p: bpr_loss(p, neg))(pos)
    np.testing.assert_allclose(g, -np.array([0.5, 0.0, 1.0]) / 3, atol=1e-6)
    assert np.isfinite(float(bpr_loss(pos, neg)))
    np.testing.assert_allclose(float(bpr_loss(pos, neg)), (np.log(2) + 0 + 200) / 3, rtol=1e-5)


def test_l2_penalty():
    a, b = np.arange(6.0).reshape(3, 2), np.ones((3, 2))
    want = 0.5 * ((a ** 2).sum() + (b ** 2).sum()) / 3
    np.testing.assert_allclose(l2_penalty(jnp.asarray(a), jnp.asarray(b), batch_size=3), want, rtol=1e-6)
