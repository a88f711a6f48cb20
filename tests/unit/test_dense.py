"""The dense projection (models/dense.py): its hand-written backward gives the einsum's values and autodiff's
gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ftcot_jax.models.dense import dense


def test_dense_matches_einsum_values_and_gradients():
    """n_in 1 and 2, multi-axis outputs."""
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (2, 3, 4, 5))
    w1, w2 = jax.random.normal(k[1], (5, 2, 3)), jax.random.normal(k[2], (4, 5, 6))
    for n_in, w, spec in ((1, w1, "btkd,dgc->btkgc"), (2, w2, "btkd,kdo->bto")):
        ours = lambda x, w, n_in=n_in: (dense(x, w, n_in=n_in) ** 2).sum()
        ref = lambda x, w, spec=spec: (jnp.einsum(spec, x, w) ** 2).sum()
        np.testing.assert_allclose(dense(x, w, n_in=n_in), jnp.einsum(spec, x, w), rtol=1e-5, atol=1e-5)
        for g_ours, g_ref in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w), strict=True):
            np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-4)
