"""The dense projection the model families use: `x @ w` over the leading axes of `w`, as one 2-D matmul with a
hand-written backward (dx = g w^T, dw = x^T g).

It runs on every platform with the same values as the einsum and its autodiff; XLA:CPU runs this form of the
backward dots faster than autodiff's (docs/compare.md has the measurements).

Shape suffixes (this module only needs its own): A rows (a tensor's leading axes flattened), I a dense layer's
input features (the contracted axes flattened), O its output features (the remaining axes flattened).
"""

from __future__ import annotations

import math

import jax


@jax.custom_vjp
def _matmul(x_AxI, w_IxO):
    return x_AxI @ w_IxO


def _matmul_fwd(x_AxI, w_IxO):
    return x_AxI @ w_IxO, (x_AxI, w_IxO)


def _matmul_bwd(res, g_AxO):
    x_AxI, w_IxO = res
    return g_AxO @ w_IxO.T, x_AxI.T @ g_AxO


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense(x, w, n_in: int = 1):
    """x[..., in...] @ w[in..., out...] (the `n_in` leading axes of w contracted) as one 2-D matmul with a
    hand-written backward. Callers keep the sharded one of the merged axes most major (heads, kv_heads), so the
    2-D view splits evenly on a mesh; GPT-2's fused qkv kernel (D, 3, H, K) would not, and stays an einsum."""
    in_size, out_shape = math.prod(w.shape[:n_in]), w.shape[n_in:]
    lead = x.shape[: x.ndim - n_in]
    y_AxO = _matmul(x.reshape(math.prod(lead), in_size), w.reshape(in_size, math.prod(out_shape)))
    return y_AxO.reshape(*lead, *out_shape)
