"""Channel-separated forward mode (``compute._separated``, ``planning.SeparatedForward``) against independent
Jacobians, float64 (rtol 1e-9, atol 1e-11 unless said).

* each rule of the evaluator on plain ``jax.numpy`` functions, against ``jax.jacfwd``: convolutions in NHWC and
  NCHW layouts, strided, dilated, padded, grouped (which must fall back to columns), contractions with the
  separated operand on either side, flattens that merge the channel axis (``inner`` > 1) and reshapes that break
  it, attention, a loop, a branch, shared weights;
* the kernel (every leaf with a channel axis, in chunks of whole channels with an overlapping last chunk) on
  every model of the zoo (loops, branches, remat, custom derivatives, attention, shared and tied weights, NNX),
  against ``jax.jacrev`` of the zoo's hand-written references;
* the planner's decisions and the analysis' cost agree with what the evaluator does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import layersens
from layersens.analysis import MIXED, Action, SeparatedAxis, analyze, decide
from layersens.compute._kernels import kernel
from layersens.compute._separated import Separated, separated_columns
from layersens.planning import SeparatedForward
from tests import zoo
from tests.compile_options import fast_jit
from tests.test_zoo import MODE_PAIRS, reference, split_of

TOL = dict(rtol=1e-9, atol=1e-11)
# XLA's backend optimizations off for these small programs: half the compile time, float64 results far inside TOL
jit = fast_jit


def _separated_jacobian(f, primals, first=0, colours=None):
    """Columns of ``f`` along the first leaf's channel-separated basis, as the kernel builds it, against the
    leaf's flattening: ``(leaf size, output size)`` (or the rows of colours ``first .. first + colours``)."""
    leaf = primals[0]
    C, W = leaf.shape[-1], leaf.size // leaf.shape[-1]
    colours = W if colours is None else colours
    specs = [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in primals]

    def columns(primals):
        index = first + jnp.arange(colours)
        one_hot = (index[:, None] == jnp.arange(W)[None, :]).astype(leaf.dtype)
        values = jnp.broadcast_to(one_hot.reshape((colours,) + leaf.shape[:-1] + (1,)), (colours,) + leaf.shape)
        tangents = [Separated(values, leaf.ndim - 1, C)]
        tangents += [Separated(jnp.zeros((colours,) + p.shape, p.dtype), p.ndim - 1, C) for p in primals[1:]]
        return separated_columns(jax.linearize(f, *primals)[1], specs, tangents)

    return np.asarray(jit(columns)(primals)).reshape(colours * C, -1)


def _reference(f, primals):
    jac = jit(jax.jacfwd(f, argnums=tuple(range(len(primals)))))(*primals)[0]
    out_size = int(np.prod(jac.shape[: jac.ndim - primals[0].ndim], dtype=np.int64))
    return np.asarray(jac).reshape(out_size, -1).T


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape))


def _conv(x, k, **kw):
    dn = kw.pop("dn", ("NHWC", "HWIO", "NHWC"))
    return lax.conv_general_dilated(
        x, k, kw.pop("strides", (1, 1)), kw.pop("padding", "SAME"), dimension_numbers=dn, **kw
    )


def _two_convs(rng, **second):
    x, k2 = _normal(rng, 1, 7, 6, 2), _normal(rng, 3, 3, 4, 5)

    def f(k1, b1):
        h = jnp.tanh(_conv(x, k1) + b1)
        return jax.nn.relu(_conv(h, k2, **second))

    return f, [_normal(rng, 3, 3, 2, 4), _normal(rng, 4)]


CASES = {
    "conv then conv (grouped conv rule)": lambda rng: _two_convs(rng),
    "strided, dilated, padded second conv": lambda rng: _two_convs(
        rng, strides=(2, 1), padding=((2, 1), (0, 2)), rhs_dilation=(2, 1), lhs_dilation=(1, 2)
    ),
    "grouped second conv (falls back to columns)": lambda rng: (
        lambda x, k2: (
            lambda k1, b1: _conv(jnp.tanh(_conv(x, k1) + b1), k2, feature_group_count=2),
            [_normal(rng, 3, 3, 2, 4), _normal(rng, 4)],
        )
    )(_normal(rng, 1, 5, 5, 2), _normal(rng, 3, 3, 2, 6)),
}


def _nchw(rng):
    x, k2 = _normal(rng, 1, 2, 6, 5), _normal(rng, 5, 4, 3, 3)
    dn = ("NCHW", "OIHW", "NCHW")

    def f(k1):  # the kernel's channel (output feature) is its first axis in OIHW: moved last for the leaf
        h = jnp.sin(_conv(x, jnp.moveaxis(k1, -1, 0), dn=dn))
        return _conv(h, k2, dn=dn)

    return f, [_normal(rng, 2, 3, 3, 4)]


def _flatten_dense(rng):
    x, w = _normal(rng, 1, 4, 4, 2), _normal(rng, 2 * 2 * 3, 5)

    def f(k, b):
        h = jax.nn.relu(_conv(x, k) + b)  # (1, 4, 4, 3)
        pooled = lax.reduce_window(h, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return jnp.tanh(pooled.reshape(-1) @ w)  # the flatten merges the channel axis: inner = 1 of 12

    return f, [_normal(rng, 3, 3, 2, 3), _normal(rng, 3)]


def _channel_major_flatten(rng):
    x, w = _normal(rng, 5, 3), _normal(rng, 2, 20)

    def f(a):  # (5, 4) flattened channel-last (inner = 1), contracted from the left
        return w @ jnp.tanh(x @ a).reshape(-1)

    return f, [_normal(rng, 3, 4)]


def _strided_flatten(rng):
    x, w = _normal(rng, 6, 3), _normal(rng, 24, 2)

    def f(a):  # (6, 4) transposed to (4, 6) and flattened: channel c owns positions c*6 .. c*6+5 (inner = 6)
        h = jnp.tanh(x @ a)
        return jnp.cos(h.T.reshape(-1)) @ w

    return f, [_normal(rng, 3, 4)]


def _broken_reshape(rng):
    x = _normal(rng, 6, 3)

    def f(a):  # (6, 4) → (8, 3): channels 4 and 3 do not tile; must expand, still right
        return jnp.sin(x @ a).reshape(8, 3) * jnp.arange(3.0)

    return f, [_normal(rng, 3, 4)]


def _rhs_contraction(rng):
    x, w = _normal(rng, 5, 3), _normal(rng, 2, 4)

    def f(a):  # the separated operand on the right of the contraction
        return jnp.tanh(w @ jnp.tanh(x @ a).T)

    return f, [_normal(rng, 3, 4)]


def _attention(rng):
    x, wk, wv = _normal(rng, 5, 6), _normal(rng, 6, 4), _normal(rng, 6, 4)

    def f(wq, bq):
        q, k, v = x @ wq + bq, x @ wk, x @ wv
        weights = jax.nn.softmax(q @ k.T / 2.0, axis=-1)
        return weights @ v

    return f, [_normal(rng, 6, 4), _normal(rng, 4)]


def _loop_branch_shared(rng):
    x = _normal(rng, 3)

    def f(a):  # shared weights applied twice, a scan and a cond: loops and branches expand, calls are walked
        h = jnp.tanh(x @ a) @ a.T  # (3,)
        h = lax.cond(h.sum() > -100.0, lambda v: jnp.sin(v), lambda v: v, h)

        def step(carry, _):
            return jnp.tanh(jnp.tanh(carry @ a) @ a.T), None

        out, _ = lax.scan(step, h, None, length=2)
        return jax.jit(jax.checkpoint(lambda v: jnp.sin(v @ a) * jnp.arange(1.0, 5.0)))(out)

    return f, [_normal(rng, 3, 4) * 0.5]


CASES.update(
    {
        "NCHW convolutions": _nchw,
        "pool, flatten, dense (inner)": _flatten_dense,
        "channel-major flatten": _channel_major_flatten,
        "strided flatten (inner = 6)": _strided_flatten,
        "reshape that breaks channels": _broken_reshape,
        "contraction with the separated operand on the right": _rhs_contraction,
        "attention": _attention,
        "scan, cond, remat, jit, shared weights": _loop_branch_shared,
    }
)


@pytest.mark.parametrize("name", list(CASES))
def test_rules_against_jacfwd(name):
    f, primals = CASES[name](_rng(sum(map(ord, name))))
    want = _reference(f, primals)
    got = _separated_jacobian(f, primals)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, **TOL)
    W = primals[0].size // primals[0].shape[-1]
    if W > 2:  # a chunk of colours from the middle: the basis offset
        part = _separated_jacobian(f, primals, first=1, colours=2)
        C = primals[0].shape[-1]
        np.testing.assert_allclose(part, want[C : 3 * C], **TOL)


def test_decisions_on_the_convolution_pair():
    """What the evaluator will do, from states alone: a conv of separated features mixes them (one grouped conv),
    the elementwise work before it keeps them; a grouped conv or a second tangent operand cannot."""
    f, primals = _two_convs(_rng())
    jaxpr = jax.make_jaxpr(jax.linearize(f, *primals)[1])(*primals).jaxpr
    convs = [e for e in jaxpr.eqns if e.primitive is lax.conv_general_dilated_p]
    assert convs
    separated = SeparatedAxis(3)
    second = convs[-1]
    assert decide(second, [separated, None], 4).action is Action.MIX
    assert decide(second, [separated, SeparatedAxis(3)], 4).action is Action.COLUMNS
    assert decide(second, [MIXED, None], 4).action is Action.COLUMNS


# custom_vjp's leaves have no forward mode (the planner never gives them a forward method)
ZOO_PAIRS = [p for p in MODE_PAIRS if p.values[0] != "custom_vjp"]


@pytest.mark.parametrize("case_name, layer", ZOO_PAIRS)
def test_kernel_on_the_zoo(case_name, layer):
    """Every leaf with a channel axis (and forward mode), as the planner would block it, in chunks of two
    channels' columns (an overlapping last chunk where W is odd), against jax.jacrev of the hand-written
    reference."""
    c = zoo.case(case_name)
    split = split_of(case_name, layer)
    analysis = analyze(split)
    ref_jac, _ = reference(case_name, layer)
    params = jax.device_put(split.params)
    leaves = [n for n in analysis.separation if n not in analysis.limits.forward_blocked]
    assert leaves
    checked = 0
    for name in leaves:
        C = analysis.separation[name].channels
        size = int(np.prod(np.shape(split.params[name]), dtype=np.int64))
        width = min(size, 2 * C)
        k = kernel(SeparatedForward(), split, (name,), width, analysis.structure)
        linearize, chunk = jit(k.linearize), jit(k.chunk)
        for n, x in enumerate(c.x):
            linear = linearize(params, x)
            got = np.zeros((split.num_outputs, size))
            for offset in sorted({min(o, size - width) for o in range(0, size, width)}):
                (values,) = chunk(linear, np.int32(offset))
                got[:, offset : offset + width] = np.asarray(values)
            want = ref_jac.get(name)
            want = np.zeros_like(got) if want is None else want[n].reshape(split.num_outputs, size)
            np.testing.assert_allclose(got, want, **TOL, err_msg=name)
            checked += 1
    assert checked


def test_lenet_layers_use_it_and_agree(lenet_linen):
    """The shipped LeNet: Auto carries conv1's columns separated to relu2, and every conv leaf to fc1; float32
    against dense forward or reverse mode, rtol 1e-5, atol 1e-6 of the largest entry."""
    x = lenet_linen.example_inputs[:1]
    for layer, leaf, other in (("relu2", "conv1/kernel", "forward"), ("fc1", "conv2/kernel", "reverse")):
        split = layersens.split(lenet_linen, layer)
        assert layersens.plan(split, x).methods[leaf] == "fwd-separated"
        got = layersens.jacobian(split, x, max_memory="8MiB")  # several chunks
        want = layersens.jacobian(split, x, mode=other)
        scale = float(np.abs(want.matrix).max())
        np.testing.assert_allclose(got.matrix, want.matrix, rtol=1e-5, atol=1e-6 * scale, err_msg=layer)
        assert "fwd-separated" in got.mode


def test_cost_counts_the_mix_once():
    """conv1's separated pass to relu2 costs about one dense pass (the grouped conv2 has conv2's arithmetic), far
    below the C = 20 dense passes it stands for."""
    from layersens.examples import LENET_DIGITS

    split = layersens.split(layersens.load_model(LENET_DIGITS), "relu2")
    analysis = analyze(split)
    separated = analysis.separation["conv1/kernel"]
    assert separated.channels == 20
    dense_pass = analysis.cost.flops(["conv1/kernel"])
    assert separated.flops < 3 * dense_pass
    assert (
        SeparatedForward().cost(split, ("conv1/kernel",))
        < layersens.planning.DenseForward().cost(split, ("conv1/kernel",)) / 4
    )
