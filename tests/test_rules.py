"""Every analysis rule against the truth, over random shapes.

Structure: a rule may only claim "output slice c along axis b depends on the leaf's channel c alone" where the
Jacobian (``jax.jacfwd``) is zero off that diagonal. Dependence: the inputs an output depends on must include
every input whose perturbation changes it, and equal what JAX's own liveness (``pe.dce_jaxpr``) keeps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax
from jax._src.interpreters import partial_eval as pe

from layersens.analysis import MIXED, STRUCTURE_RULES, jaxpr_dependence, structure_of

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # examples: conftest's profile
shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


def analysed_axis(f, leaf, axis, *consts):
    closed = jax.make_jaxpr(f)(leaf, *consts)
    (out,) = structure_of(closed.jaxpr, [axis] + [None] * len(consts))
    return out


def assert_diagonal(f, leaf, axis, out_axis, *consts):
    """Off the channel diagonal, the Jacobian of ``f`` with respect to ``leaf`` is exactly zero."""
    jac = np.asarray(jax.jacfwd(f)(leaf, *consts))
    out_ndim = jac.ndim - leaf.ndim
    moved = np.moveaxis(jac, [out_axis, out_ndim + axis], [0, 1])
    assert moved.shape[0] == moved.shape[1], "a claimed channel axis must keep the leaf's channel count"
    off = ~np.eye(moved.shape[0], dtype=bool)
    assert np.all(moved[off] == 0), f"structure claimed along output axis {out_axis} but channels mix"


def check(f, leaf, axis, *consts, expect=None):
    """The analysis is sound for ``f``; with ``expect``, it also finds that answer."""
    out = analysed_axis(f, leaf, axis, *consts)
    if out not in (None, MIXED):
        assert_diagonal(f, leaf, axis, out, *consts)
    if expect is not None:
        assert out == expect, (out, expect)
    return out


def rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


@SETTINGS
@given(shape=shapes, data=st.data())
def test_elementwise_with_broadcast_constants(shape, data):
    axis = data.draw(st.integers(0, len(shape) - 1))
    const_shape = tuple(1 if data.draw(st.booleans()) else d for d in shape)
    leaf, const = rand(shape), rand(const_shape, 1)
    check(lambda w, c: jnp.tanh(w * c + w) / (1 + w**2), leaf, axis, const, expect=axis)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_broadcast_in_dim(shape, data):
    axis = data.draw(st.integers(0, len(shape) - 1))
    extra = data.draw(st.integers(1, 3))
    position = data.draw(st.integers(0, len(shape)))
    out_shape = shape[:position] + (extra,) + shape[position:]
    dims = tuple(d if d < position else d + 1 for d in range(len(shape)))
    leaf = rand(shape)
    check(lambda w: lax.broadcast_in_dim(w, out_shape, dims), leaf, axis, expect=dims[axis])


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4).map(tuple), data=st.data())
def test_reshape_transpose_squeeze(shape, data):
    axis = data.draw(st.integers(0, len(shape) - 1))
    leaf = rand(shape)
    new_shape = data.draw(st.permutations(list(shape)))  # same sizes in another order: a reshape, not a transpose
    check(lambda w: w.reshape(new_shape), leaf, axis)
    merged = shape[:-2] + (shape[-2] * shape[-1],)
    check(lambda w: w.reshape(merged), leaf, axis)
    perm = tuple(data.draw(st.permutations(list(range(len(shape))))))
    check(lambda w: jnp.transpose(w, perm), leaf, axis, expect=perm.index(axis))
    with_one = shape[:axis] + (1,) + shape[axis:]
    check(lambda w: jnp.squeeze(w.reshape(with_one), axis), leaf, axis)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_slices_reductions_and_scans_along_axes(shape, data):
    axis = data.draw(st.integers(0, len(shape) - 1))
    other = data.draw(st.integers(0, len(shape) - 1))
    leaf = rand(shape)
    check(lambda w: lax.slice_in_dim(w, 0, max(1, shape[other] - 1), axis=other), leaf, axis)
    check(lambda w: lax.dynamic_slice_in_dim(w, 1, 1, axis=other), leaf, axis)
    check(lambda w: w.sum(axis=other), leaf, axis)
    check(lambda w: w.max(axis=other), leaf, axis)
    check(lambda w: jnp.cumsum(w, axis=other), leaf, axis)
    check(lambda w: jnp.flip(w, axis=other), leaf, axis)
    check(lambda w: jnp.concatenate([w, 2 * w], axis=other), leaf, axis)
    check(lambda w, c: jnp.concatenate([w, c], axis=other), leaf, axis, rand(shape, 2))
    pads = [(0, 0, 0)] * len(shape)
    pads[other] = (1, 0, 0)
    check(lambda w: lax.pad(w, 0.0, pads), leaf, axis)
    if shape[other] % 2 == 0:
        check(lambda w: jnp.split(w, 2, axis=other)[1], leaf, axis)
    check(
        lambda w, c: lax.dynamic_update_slice_in_dim(c, w[:1] if other == 0 else w, 0, axis=0),
        leaf,
        axis,
        rand((shape[0] + 1,) + shape[1:], 3),
    )


@SETTINGS
@given(size=st.integers(2, 5), channels=st.integers(1, 4), data=st.data())
def test_pooling_windows(size, channels, data):
    leaf = rand((size, size, channels))
    window = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    strides = (1, data.draw(st.integers(1, 2)), 1)
    for reducer, init in ((lax.max, -jnp.inf), (lax.add, 0.0)):
        out = check(lambda w: lax.reduce_window(w, init, reducer, window, strides, "VALID"), leaf, 2)
        if window[2] == 1:
            assert out == 2
    # max-pooling's derivative (select_and_gather_add) in the JVP program
    x = rand((size, size, channels), 4)

    def pooled_tangent(t):
        pool = lambda v: lax.reduce_window(v, -jnp.inf, lax.max, window, strides, "VALID")  # noqa: E731
        return jax.jvp(pool, (x,), (t,))[1]

    check(pooled_tangent, leaf, 2)


@SETTINGS
@given(cin=st.integers(1, 3), cout=st.integers(1, 4), groups=st.sampled_from([1, 2, 3]), data=st.data())
def test_convolution(cin, cout, groups, data):
    """Grouped and depthwise (one input feature per group) kernels are channel-diagonal like plain ones."""
    cin, cout = cin * groups, cout * groups
    kernel = rand((3, 3, cin // groups, cout))
    x = rand((1, 5, 5, cin), 1)
    conv = lambda k, x: lax.conv_general_dilated(  # noqa: E731
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
    )
    assert check(conv, kernel, 3, x) == 3
    check(lambda x, k: conv(k, x), x, 3, kernel)  # the input's channels mix in every convolution


@SETTINGS
@given(m=st.integers(1, 4), k=st.integers(1, 4), n=st.integers(1, 4), b=st.integers(1, 3))
def test_dot_general(m, k, n, b):
    w = rand((k, n))
    x = rand((m, k), 1)
    check(lambda w, x: x @ w, w, 1, x, expect=1)
    check(lambda w, x: x @ w, w, 0, x, expect=MIXED)  # the contracted axis
    check(lambda x, w: x @ w, x, 0, w, expect=0)
    batched = rand((b, m, k), 2)
    check(lambda v: jnp.einsum("bmk,bkn->bmn", v, rand((b, k, n), 3)), batched, 0, expect=0)
    check(lambda v: jnp.einsum("bmk,bnk->bmn", v, 2 * v), batched, 0, expect=0 if b > 1 else None)
    # attention scores: the batch axis is shared (JAX squeezes a batch of one away, which the analysis
    # conservatively reads as mixing)
    check(lambda v: v @ v.swapaxes(-1, -2), batched, 0, expect=0 if b > 1 else None)


def crand(shape, seed=0):
    return rand(shape, seed) + 1j * rand(shape, seed + 100)


# A complex layer is cut as a real problem (layersens.tracing._complex): a complex leaf's real part enters
# through lax.complex, and the output leaves through real/imag. The rules must stay sound on complex values.
COMPLEX_OUTPUTS = {"real": jnp.real, "imag": jnp.imag, "abs": jnp.abs, "conj": jnp.conj, "itself": lambda z: z}


@SETTINGS
@given(shape=shapes, data=st.data(), out=st.sampled_from(sorted(COMPLEX_OUTPUTS)))
def test_complex_elementwise(shape, data, out):
    axis = data.draw(st.integers(0, len(shape) - 1))
    leaf, imag, c = rand(shape), rand(shape, 1), crand(shape, 2)

    def f(w, v):
        z = lax.complex(w, v)
        return COMPLEX_OUTPUTS[out](jnp.tanh(z * c) + jnp.exp(lax.complex(v, w)) * jnp.conj(z))

    check(f, leaf, axis, imag, expect=axis)
    check(lambda v, w: f(w, v), imag, axis, leaf, expect=axis)  # the imaginary part as the leaf


@SETTINGS
@given(shape=shapes, data=st.data())
def test_stack(shape, data):
    """A complex layer's real problem stacks [Re h; Im h] on a new leading axis (jnp.stack, a primitive)."""
    axis = data.draw(st.integers(0, len(shape) - 1))
    at = data.draw(st.integers(0, len(shape)))
    leaf = rand(shape)
    shifted = axis + 1 if axis >= at else axis
    check(lambda w: jnp.stack([jnp.sin(w), 2 * w], axis=at), leaf, axis, expect=shifted)
    v = lax.complex(leaf, rand(shape, 1))
    check(lambda w: jnp.stack([jnp.real(w * v), jnp.imag(w * v)], axis=at), leaf, axis, expect=shifted)


@SETTINGS
@given(m=st.integers(1, 4), k=st.integers(1, 4), n=st.integers(1, 4), out=st.sampled_from(sorted(COMPLEX_OUTPUTS)))
def test_complex_dot_general(m, k, n, out):
    w, v, x = rand((k, n)), rand((k, n), 1), crand((m, k), 2)
    f = lambda w, v, x: COMPLEX_OUTPUTS[out](x @ lax.complex(w, v))  # noqa: E731
    check(f, w, 1, v, x, expect=1)
    check(f, w, 0, v, x, expect=MIXED)  # the contracted axis


@SETTINGS
@given(cin=st.integers(1, 3), cout=st.integers(1, 4), out=st.sampled_from(sorted(COMPLEX_OUTPUTS)))
def test_complex_convolution(cin, cout, out):
    kernel, imag, x = rand((3, 3, cin, cout)), rand((3, 3, cin, cout), 1), crand((1, 5, 5, cin), 2)

    def conv(k, v, x):
        z = lax.conv_general_dilated(x, lax.complex(k, v), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return COMPLEX_OUTPUTS[out](z)

    assert check(conv, kernel, 3, imag, x) == 3


@SETTINGS
@given(vocab=st.integers(2, 6), dim=st.integers(1, 4), tokens=st.integers(1, 5))
def test_gather_embedding_lookup(vocab, dim, tokens):
    table = rand((vocab, dim))
    ids = jnp.asarray(np.random.default_rng(vocab).integers(0, vocab, tokens))
    check(lambda t: t[ids], table, 1, expect=1)
    check(lambda t: jnp.take(t, ids, axis=0), table, 1, expect=1)
    check(lambda t: t[ids], table, 0, expect=MIXED)  # gathered rows: not a channel map
    check(lambda t: jnp.take(t.T, ids, axis=1), table, 1, expect=0)


@SETTINGS
@given(channels=st.integers(2, 4), steps=st.integers(1, 4))
def test_scan_keeps_structure_only_if_every_step_does(channels, steps):
    scale = rand((channels,))
    mix = rand((channels, channels), 1)
    h0 = rand((channels,), 2)

    def scaled(s):  # h ← h * s each step: channel c reads only s[c]
        return lax.scan(lambda h, _: (h * s, None), h0, None, length=steps)[0]

    def mixed(s):  # h ← (h @ mix) * s: one step is diagonal in s, several are not
        return lax.scan(lambda h, _: ((h @ mix) * s, None), h0, None, length=steps)[0]

    check(scaled, scale, 0, expect=0)
    out = check(mixed, scale, 0)
    if steps >= 2:
        assert out == MIXED

    def stacked(s):  # ys stacked on a new leading axis
        return lax.scan(lambda h, _: (h * s, h * s), h0, None, length=steps)[1]

    check(stacked, scale, 0, expect=1)
    check(lambda s: lax.fori_loop(0, steps, lambda i, h: (h @ mix) * s, h0), scale, 0)
    check(
        lambda s: lax.while_loop(lambda c: c[0] < steps, lambda c: (c[0] + 1, (c[1] @ mix) * s), (0, h0))[1],
        scale,
        0,
        expect=MIXED if channels > 1 else None,
    )
    check(lambda s: lax.cond(h0.sum() > 0, lambda: h0 * s, lambda: h0 @ mix * s), scale, 0)
    check(lambda s: lax.cond(s.sum() > 0, lambda: h0 * s, lambda: 2 * h0 * s), scale, 0, expect=MIXED)


def test_every_registered_rule_has_a_primitive_and_unknown_primitives_mix():
    assert all(hasattr(p, "bind") for p in STRUCTURE_RULES)
    assert analysed_axis(lambda w: jnp.sort(w, axis=0), rand((3, 2)), 1) == MIXED  # sort has no rule
    assert analysed_axis(lambda w: jnp.sort(w, axis=0) * 0 + 1.0, rand((3, 2)), 1) == MIXED


# --- dependence ---------------------------------------------------------------------------------------------


def _programs():
    """Functions of three inputs (a, b, c) returning several outputs, with calls, loops and branches."""
    mix = jnp.arange(9.0).reshape(3, 3) / 9

    def scan_carry(a, b, c):
        (h, g), ys = lax.scan(
            lambda carry, x: ((jnp.tanh(carry[0] @ mix + x), carry[1] + carry[0]), carry[1]),
            (a, jnp.zeros(3)),
            jnp.stack([b, b]),
        )
        return h, g, ys, c

    def scan_reads_carry_late(a, b, c):
        # b only reaches the output through the second iteration's carry
        (h, g), _ = lax.scan(lambda carry, _: ((carry[1], carry[0] * 0 + b), None), (a, c), None, length=2)
        return h, g

    def while_loop(a, b, c):
        n, h = lax.while_loop(lambda s: s[0] < 3, lambda s: (s[0] + 1, jnp.sin(s[1] * b)), (0, a))
        return h, c * 2

    def cond(a, b, c):
        return lax.cond(a.sum() > 0, lambda: b * 2, lambda: jnp.ones(3)), c

    def calls(a, b, c):
        f = jax.jit(lambda u, v: (u * 2, v))
        g = jax.checkpoint(lambda u: jnp.sin(u))
        u, v = f(a, c)
        return g(u), v + b

    def fori(a, b, c):
        return lax.fori_loop(0, 4, lambda i, h: h @ mix + b, a), c

    return [scan_carry, scan_reads_carry_late, while_loop, cond, calls, fori]


@pytest.mark.parametrize("program", _programs(), ids=lambda f: f.__name__)
def test_dependence_matches_jax_liveness_and_perturbation(program):
    args = [jnp.linspace(0.1, 0.9, 3) + i for i in range(3)]
    closed = jax.make_jaxpr(program)(*args)
    ours = jaxpr_dependence(closed)
    base = [np.asarray(o) for o in program(*args)]
    for k in range(len(closed.jaxpr.outvars)):
        _, used = pe.dce_jaxpr(closed.jaxpr, [i == k for i in range(len(closed.jaxpr.outvars))])
        assert ours[k] == {i for i, u in enumerate(used) if u}, (program.__name__, k)
        for i in range(3):
            bumped = list(args)
            bumped[i] = args[i] + 0.37
            if not np.allclose(np.asarray(program(*bumped)[k]), base[k]):
                assert i in ours[k], (program.__name__, k, i)
