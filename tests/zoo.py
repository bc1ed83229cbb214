"""A model zoo for layersens: small Flax models with control flow, each with hand-written flat references.

Every case is a tiny linen or NNX model (20 to 333 parameters), seeded nontrivial parameter values (nonzero
biases, scales away from 1, BatchNorm running means and variances away from 0 and 1) and two inputs. For each
chosen layer a case gives

* ``expected``: the parameter leaves that actually reach the layer, written by hand, and
* ``reference(params, x)``: the layer's activation for ONE example, written in plain ``jax.numpy`` / ``jax.lax``
  without Flax, taking a dict of leaf arrays keyed like ``split.param_names`` (``"module/param"``).

``case.flax_values(flat_params, x)`` computes the same activations (every layer of the case, from one forward
pass) through Flax itself (``module.apply`` with ``capture_intermediates``, or ``nnx.capture``), independently of
layersens, so that the references and the expected sets can be checked against the models they describe.
``case(name)`` builds (once) and returns a case; ``LAYERS`` names every case's layers, ``MODE_LAYERS`` those run
through every Jacobian mode.

Control flow the zoo exercises: ``jax.lax.scan`` with a two-part carry (an RNN whose accumulator reads the
hidden state), a scan that mixes channels before a per-channel scale, linen ``nn.scan`` and NNX ``nnx.scan``
over stacked layers, ``jax.lax.while_loop``, ``jax.lax.fori_loop`` (static bounds: it traces to ``scan``),
``jax.lax.cond``, ``nn.remat``, ``jax.custom_vjp``, ``jax.custom_jvp`` and shared weights.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import layersens

F64 = jnp.float64
BN_EPS = 1e-5  # flax BatchNorm default
LN_EPS = 1e-6  # flax LayerNorm default


# ---------------------------------------------------------------------------------------------------------------
# Plumbing: cases, parameter perturbation, Flax-side values
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layer:
    expected: frozenset[str]
    reference: Callable  # reference(params: {leaf name: array}, x_one_example) -> activation


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    name: str
    model: layersens.Model
    x: np.ndarray  # a batch of examples
    flat_params: dict[str, np.ndarray]  # every parameter leaf of the model, float64, keyed "module/param"
    layers: dict[str, Layer]
    flax_values: Callable  # flax_values(flat_params, x_one_example) -> {layer: activation}, through Flax only


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict) or hasattr(value, "items"):
            out.update(_flatten(dict(value), path))
        else:
            out[path] = value
    return out


def _unflatten(flat):
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


def _f64(tree):
    return jax.tree.map(
        lambda a: jnp.asarray(a, F64) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else jnp.asarray(a),
        tree,
    )


def _random_values(tree, seed):
    """Seeded values for every floating leaf of a tree of shapes (``jax.eval_shape`` of an init): kernels
    ~ N(0, 1/fan_in), biases and other vectors ~ N(0, 0.3²), scales ~ 1 + N(0, 0.3²), BatchNorm means ~ N(0, 1)
    and variances 0.5 + |N(0, 1)|. Filling shapes with numpy values needs no compilation (an eager Flax init
    compiles one XLA program per parameter)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        last = str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1])))
        shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)
        if not np.issubdtype(dtype, np.floating):
            return np.zeros(shape, dtype)
        noise = rng.normal(size=shape)
        if last == "var":
            value = 0.5 + np.abs(noise)
        elif last == "mean":
            value = noise
        elif last in ("scale", "s"):
            value = 1.0 + 0.3 * noise
        elif last in ("kernel", "embedding") or last.startswith("w"):
            fan_in = int(np.prod(shape[:-1])) // (DEPTH if "blocks" in str(path) else 1)  # stacked: one layer's
            value = noise / np.sqrt(max(1, fan_in))
        else:
            value = 0.3 * noise
        return value.astype(dtype)

    return jax.tree_util.tree_map_with_path(fill, tree)


def _lookup_linen(intermediates, layer):
    """``intermediates`` of a ``capture_intermediates=True`` apply -> the named value (batched)."""
    index = 0
    if "#" in layer:
        layer, i = layer.split("#")
        index = int(i)
    node = intermediates
    if layer != "output":
        for part in layer.split("/"):
            node = node[part]
    if isinstance(node, dict) or hasattr(node, "items"):
        node = node["__call__"]
    return node[index]


def _linen_case(name, module, input_shape, x, layers, *, input_dtype="float32", call_kwargs=None, seed=0):
    init_x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), input_dtype)
    shapes = jax.eval_shape(functools.partial(module.init, **(call_kwargs or {})), jax.random.key(seed), init_x)
    variables = _random_values(nn.meta.unbox(dict(shapes)), seed + 100)
    model = layersens.from_linen(module, variables, input_shape, input_dtype=input_dtype, call_kwargs=call_kwargs)
    constants = _f64({k: v for k, v in variables.items() if k not in ("params", "intermediates")})
    flat = {k: np.asarray(v, np.float64) for k, v in _flatten(variables["params"]).items()}

    def flax_values(flat_params, x1):
        _, state = module.apply(
            {"params": _unflatten(dict(flat_params)), **constants},
            jnp.asarray(x1)[None],
            mutable=["intermediates"],
            capture_intermediates=True,
            **(call_kwargs or {}),
        )
        return {layer: _lookup_linen(state["intermediates"], layer)[0] for layer in layers}

    built = {k: Layer(frozenset(e), functools.partial(r, _f64(constants))) for k, (e, r) in layers.items()}
    return Case(name, model, x, flat, built, flax_values)


def _nnx_case(name, make_module, input_shape, x, layers, seed=0):
    """``make_module()`` builds the module; it is run abstractly (``nnx.eval_shape``) and filled with seeded
    values."""
    graphdef, pstate, rest = nnx.split(nnx.eval_shape(make_module), nnx.Param, ...)
    pure = _random_values(nnx.to_pure_dict(pstate), seed + 100)
    nnx.replace_by_pure_dict(pstate, jax.tree.map(jnp.asarray, pure))
    # other state (none in this zoo's NNX models) would be abstract too; zeros stand in for it
    rest = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype) if isinstance(a, jax.ShapeDtypeStruct) else a, rest)
    module = nnx.merge(graphdef, pstate, rest)
    model = layersens.from_nnx(module, input_shape)
    flat = {k: np.asarray(v, np.float64) for k, v in _flatten(pure).items()}

    def flax_values(flat_params, x1):
        state = jax.tree.map(lambda v: v, pstate)
        nnx.replace_by_pure_dict(state, _unflatten(dict(flat_params)))
        m = nnx.merge(graphdef, state, rest, copy=True)
        y, captured = nnx.capture(m, nnx.Intermediate)(jnp.asarray(x1)[None])
        captured = nnx.to_pure_dict(captured)
        values = {}
        for layer in layers:
            node = {"output": (y,)} if layer == "output" else captured
            for part in layer.split("/"):
                node = node[part]
            values[layer] = node[0][0]  # a sown value is a tuple
        return values

    built = {k: Layer(frozenset(e), functools.partial(r, {})) for k, (e, r) in layers.items()}
    return Case(name, model, x, flat, built, flax_values)


def _inputs(seed, shape, n=2):
    return np.random.default_rng(seed).normal(size=(n,) + tuple(shape))


# Flat building blocks used by the references.


def dense(p, name, h):
    return h @ p[f"{name}/kernel"] + p[f"{name}/bias"]


def conv(p, name, h, padding="SAME"):
    y = jax.lax.conv_general_dilated(
        h[None], p[f"{name}/kernel"], (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )[0]
    return y + p[f"{name}/bias"]


def relu(h):
    return jnp.maximum(h, 0)


def gelu_tanh(h):
    return 0.5 * h * (1 + jnp.tanh(jnp.sqrt(2 / jnp.pi) * (h + 0.044715 * h**3)))


def layer_norm(p, name, h):
    mean = h.mean(-1, keepdims=True)
    var = ((h - mean) ** 2).mean(-1, keepdims=True)
    return (h - mean) / jnp.sqrt(var + LN_EPS) * p[f"{name}/scale"] + p[f"{name}/bias"]


def keys(*modules, leaves=("kernel", "bias")):
    return {f"{m}/{leaf}" for m in modules for leaf in leaves}


# ---------------------------------------------------------------------------------------------------------------
# 1. MLP
# ---------------------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(4, name="dense1")(x))
        self.sow("intermediates", "hidden", h)
        return nn.Dense(3, name="dense2")(h)


def mlp_hidden(c, p, x):
    return jnp.tanh(dense(p, "dense1", x))


def mlp_dense2(c, p, x):
    return dense(p, "dense2", mlp_hidden(c, p, x))


def make_mlp():
    return _linen_case(
        "mlp",
        MLP(),
        (3,),
        _inputs(1, (3,)),
        {"hidden": (keys("dense1"), mlp_hidden), "dense2": (keys("dense1", "dense2"), mlp_dense2)},
    )


# ---------------------------------------------------------------------------------------------------------------
# 2. CNN with BatchNorm in evaluation mode
# ---------------------------------------------------------------------------------------------------------------


class BNCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Conv(3, (3, 3), padding="SAME", name="conv")(x)
        h = nn.BatchNorm(use_running_average=not train, name="bn")(h)
        h = nn.relu(h)
        self.sow("intermediates", "act", h)
        h = nn.Conv(2, (3, 3), padding="SAME", name="conv2")(h)
        return nn.Dense(2, name="head")(h.mean((1, 2)))


def bncnn_act(c, p, x):
    h = conv(p, "conv", x)
    stats = c["batch_stats"]["bn"]
    h = (h - stats["mean"]) / jnp.sqrt(stats["var"] + BN_EPS) * p["bn/scale"] + p["bn/bias"]
    return relu(h)


def bncnn_conv2(c, p, x):
    return conv(p, "conv2", bncnn_act(c, p, x))


def make_bncnn():
    bn = {"bn/scale", "bn/bias"}
    return _linen_case(
        "bn_cnn",
        BNCNN(),
        (4, 4, 2),
        _inputs(2, (4, 4, 2)),
        {"act": (keys("conv") | bn, bncnn_act), "conv2": (keys("conv", "conv2") | bn, bncnn_conv2)},
        call_kwargs={"train": False},
    )


# ---------------------------------------------------------------------------------------------------------------
# 3. ResNet-style blocks with residual additions (and a projection shortcut that runs before conv2, not into it)
# ---------------------------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    features: int
    project: bool = False

    @nn.compact
    def __call__(self, h):
        skip = nn.Conv(self.features, (1, 1), name="proj")(h) if self.project else h
        y = nn.relu(nn.Conv(self.features, (3, 3), padding="SAME", name="conv1")(h))
        y = nn.Conv(self.features, (3, 3), padding="SAME", name="conv2")(y)
        return nn.relu(y + skip)


class ResNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(3, (3, 3), padding="SAME", name="stem")(x))
        h = ResBlock(3, name="block1")(h)
        h = ResBlock(2, project=True, name="block2")(h)
        return nn.Dense(2, name="head")(h.mean((1, 2)))


def resnet_block1(c, p, x):
    h = relu(conv(p, "stem", x))
    y = conv(p, "block1/conv2", relu(conv(p, "block1/conv1", h)))
    return relu(y + h)


def resnet_block2_conv2(c, p, x):
    h = resnet_block1(c, p, x)
    return conv(p, "block2/conv2", relu(conv(p, "block2/conv1", h)))


def make_resnet():
    up = keys("stem", "block1/conv1", "block1/conv2")
    return _linen_case(
        "resnet",
        ResNet(),
        (4, 4, 2),
        _inputs(3, (4, 4, 2)),
        {
            "block1": (up, resnet_block1),
            # block2/proj runs before block2/conv2 but does not feed it
            "block2/conv2": (up | keys("block2/conv1", "block2/conv2"), resnet_block2_conv2),
        },
    )


# ---------------------------------------------------------------------------------------------------------------
# 4. Transformer block: LayerNorm, 2-head self-attention, residuals, GELU MLP, on (tokens, features)
# ---------------------------------------------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4, name="attn")(nn.LayerNorm(name="ln1")(x))
        h = x + a
        m = nn.Dense(4, name="mlp2")(nn.gelu(nn.Dense(6, name="mlp1")(nn.LayerNorm(name="ln2")(h))))
        return h + m


def attention(p, name, h):
    q = jnp.einsum("tf,fhd->thd", h, p[f"{name}/query/kernel"]) + p[f"{name}/query/bias"]
    k = jnp.einsum("tf,fhd->thd", h, p[f"{name}/key/kernel"]) + p[f"{name}/key/bias"]
    v = jnp.einsum("tf,fhd->thd", h, p[f"{name}/value/kernel"]) + p[f"{name}/value/bias"]
    q = q / jnp.sqrt(q.shape[-1])
    logits = jnp.einsum("qhd,khd->hqk", q, k)
    w = jnp.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    o = jnp.einsum("hqk,khd->qhd", w, v)
    return jnp.einsum("qhd,hdf->qf", o, p[f"{name}/out/kernel"]) + p[f"{name}/out/bias"]


def transformer_attn(c, p, x):
    return attention(p, "attn", layer_norm(p, "ln1", x))


def transformer_output(c, p, x):
    h = x + transformer_attn(c, p, x)
    return h + dense(p, "mlp2", gelu_tanh(dense(p, "mlp1", layer_norm(p, "ln2", h))))


def make_transformer():
    attn = keys("attn/query", "attn/key", "attn/value", "attn/out") | {"ln1/scale", "ln1/bias"}
    return _linen_case(
        "transformer",
        TransformerBlock(),
        (3, 4),
        _inputs(4, (3, 4)),
        {
            "attn": (attn, transformer_attn),
            "output": (attn | keys("mlp1", "mlp2") | {"ln2/scale", "ln2/bias"}, transformer_output),
        },
    )


# ---------------------------------------------------------------------------------------------------------------
# 5. RNN under jax.lax.scan; the carry holds the hidden state and an accumulator that reads it
# ---------------------------------------------------------------------------------------------------------------


class ElmanScan(nn.Module):
    hidden: int = 3

    @nn.compact
    def __call__(self, xs):  # xs: (batch, time, features)
        init = nn.initializers.normal(0.6)
        w_in = self.param("w_in", init, (xs.shape[-1], self.hidden), jnp.float32)
        w_rec = self.param("w_rec", init, (self.hidden, self.hidden), jnp.float32)
        b = self.param("b", init, (self.hidden,), jnp.float32)
        h0 = self.param("h0", init, (self.hidden,), jnp.float32)

        def step(carry, x_t):
            h, acc = carry
            # acc reads the OLD hidden state: after one step it does not depend on the weights yet
            return (jnp.tanh(x_t @ w_in + h @ w_rec + b), acc + h), None

        batch = xs.shape[0]
        dtype = jnp.result_type(xs, w_in, w_rec, b, h0)  # the carry keeps one dtype
        carry0 = (jnp.broadcast_to(h0, (batch, self.hidden)).astype(dtype), jnp.zeros((batch, self.hidden), dtype))
        (h, acc), _ = jax.lax.scan(step, carry0, jnp.swapaxes(xs, 0, 1))
        return h, acc


class RNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        h, acc = ElmanScan(name="rnn")(x)
        self.sow("intermediates", "final", h)
        self.sow("intermediates", "acc", acc)
        return nn.Dense(2, name="readout")(acc)


def rnn_carry(p, x):
    h, acc = p["rnn/h0"], jnp.zeros_like(p["rnn/h0"])
    for t in range(x.shape[0]):
        h, acc = jnp.tanh(x[t] @ p["rnn/w_in"] + h @ p["rnn/w_rec"] + p["rnn/b"]), acc + h
    return h, acc


def rnn_final(c, p, x):
    return rnn_carry(p, x)[0]


def rnn_acc(c, p, x):
    return rnn_carry(p, x)[1]


def make_rnn():
    up = {"rnn/w_in", "rnn/w_rec", "rnn/b", "rnn/h0"}
    return _linen_case("rnn_scan", RNN(), (4, 2), _inputs(5, (4, 2)), {"final": (up, rnn_final), "acc": (up, rnn_acc)})


# ---------------------------------------------------------------------------------------------------------------
# 6. A scan whose body mixes channels (h @ W) and then scales per channel: NOT channel-diagonal after 2+ steps
# ---------------------------------------------------------------------------------------------------------------


class MixScale(nn.Module):
    @nn.compact
    def __call__(self, xs):  # (batch, time, channels)
        c = xs.shape[-1]
        w = self.param("w", nn.initializers.normal(0.6), (c, c), jnp.float32)
        s = self.param("s", nn.initializers.ones, (c,), jnp.float32)

        xs = xs.astype(jnp.result_type(xs, w, s))  # the carry keeps one dtype

        def step(h, x_t):
            return (h @ w + x_t) * s, None

        h, _ = jax.lax.scan(step, xs[:, 0], jnp.swapaxes(xs[:, 1:], 0, 1))
        return h


class MixScan(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = MixScale(name="mix")(x)
        self.sow("intermediates", "mixed", h)
        return nn.Dense(2, name="readout")(h)


def mix_mixed(c, p, x):
    h = x[0]
    for t in range(1, x.shape[0]):
        h = (h @ p["mix/w"] + x[t]) * p["mix/s"]
    return h


def mix_readout(c, p, x):
    return dense(p, "readout", mix_mixed(c, p, x))


def make_mix_scan():
    up = {"mix/w", "mix/s"}
    return _linen_case(
        "mix_scan",
        MixScan(),
        (4, 3),
        _inputs(6, (4, 3)),
        {"mixed": (up, mix_mixed), "readout": (up | keys("readout"), mix_readout)},
    )


# ---------------------------------------------------------------------------------------------------------------
# 7. Scan over layers: linen nn.scan and NNX nnx.vmap (init) + nnx.scan (apply), params stacked on axis 0
# ---------------------------------------------------------------------------------------------------------------

DEPTH = 3


class ScanBlock(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        return jnp.tanh(nn.Dense(3, name="dense")(h)), None


class LinenScanStack(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(3, name="embed")(x)
        stack = nn.scan(ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=DEPTH)
        h, _ = stack(name="blocks")(h, None)
        self.sow("intermediates", "stack_out", h)
        return nn.Dense(2, name="head")(h)


class NNXBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, h):
        return jnp.tanh(self.linear(h))


class NNXScanStack(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Linear(2, 3, rngs=rngs)

        @nnx.split_rngs(splits=DEPTH)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs):
            return NNXBlock(rngs)

        self.blocks = create(rngs)
        self.head = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        h = self.embed(x)

        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def forward(block, h):
            return block(h)

        h = forward(self.blocks, h)
        self.sow(nnx.Intermediate, "stack_out", h)
        return self.head(h)


def stack_ref(block, p, x):
    h = dense(p, "embed", x)
    for i in range(DEPTH):
        h = jnp.tanh(h @ p[f"blocks/{block}/kernel"][i] + p[f"blocks/{block}/bias"][i])
    return h


def make_linen_scan_layers():
    up = keys("embed", "blocks/dense")
    return _linen_case(
        "linen_scan_layers",
        LinenScanStack(),
        (2,),
        _inputs(7, (2,)),
        {
            "stack_out": (up, lambda c, p, x: stack_ref("dense", p, x)),
            "head": (up | keys("head"), lambda c, p, x: dense(p, "head", stack_ref("dense", p, x))),
        },
    )


def make_nnx_scan_layers():
    up = keys("embed", "blocks/linear")
    return _nnx_case(
        "nnx_scan_layers",
        lambda: NNXScanStack(nnx.Rngs(0)),
        (2,),
        _inputs(8, (2,)),
        {
            "stack_out": (up, lambda c, p, x: stack_ref("linear", p, x)),
            "output": (up | keys("head"), lambda c, p, x: dense(p, "head", stack_ref("linear", p, x))),
        },
    )


# ---------------------------------------------------------------------------------------------------------------
# 8. jax.lax.while_loop (counter in the carry) and jax.lax.fori_loop (static bounds: traces to scan)
# ---------------------------------------------------------------------------------------------------------------

STEPS = 3


class WhileCell(nn.Module):
    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        w = self.param("w", nn.initializers.normal(0.6), (c, c), jnp.float32)
        b = self.param("b", nn.initializers.normal(0.6), (c,), jnp.float32)
        v = self.param("v", nn.initializers.normal(0.6), (c, c), jnp.float32)
        x = x.astype(jnp.result_type(x, w, b, v))  # the carry keeps one dtype

        def body(carry):
            i, h, u = carry
            return i + 1, jnp.tanh(h @ w + b), u @ v  # u rides along in the carry; it never feeds h

        _, h, u = jax.lax.while_loop(lambda carry: carry[0] < STEPS, body, (0, x, x))
        return h, u


class WhileNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h, u = WhileCell(name="loop")(nn.Dense(3, name="pre")(x))
        self.sow("intermediates", "h_loop", h)
        return nn.Dense(2, name="head")(h) + u.sum(-1, keepdims=True)


def while_h(c, p, x):
    h = dense(p, "pre", x)
    for _ in range(STEPS):
        h = jnp.tanh(h @ p["loop/w"] + p["loop/b"])
    return h


def while_output(c, p, x):
    pre = dense(p, "pre", x)
    u = pre
    for _ in range(STEPS):
        u = u @ p["loop/v"]
    return dense(p, "head", while_h(c, p, x)) + u.sum(-1, keepdims=True)


def make_while():
    up = keys("pre") | {"loop/w", "loop/b"}
    return _linen_case(
        "while_loop",
        WhileNet(),
        (2,),
        _inputs(9, (2,)),
        {"h_loop": (up, while_h), "output": (up | {"loop/v"} | keys("head"), while_output)},
    )


class ForiCell(nn.Module):
    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        w = self.param("w", nn.initializers.normal(0.6), (c, c), jnp.float32)
        b = self.param("b", nn.initializers.normal(0.6), (c,), jnp.float32)
        s = self.param("s", nn.initializers.ones, (c,), jnp.float32)
        x = x.astype(jnp.result_type(x, w, b, s))  # the carry keeps one dtype

        def body(i, carry):
            h, g = carry
            return jnp.tanh(h @ w + b), g * s + h  # g reads the OLD h

        return jax.lax.fori_loop(0, STEPS, body, (x, jnp.zeros_like(x)))


class ForiNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h, g = ForiCell(name="fori")(x)
        self.sow("intermediates", "h", h)
        self.sow("intermediates", "g", g)
        return nn.Dense(2, name="head")(g)


def fori_carry(p, x):
    h, g = x, jnp.zeros_like(x)
    for _ in range(STEPS):
        h, g = jnp.tanh(h @ p["fori/w"] + p["fori/b"]), g * p["fori/s"] + h
    return h, g


def fori_h(c, p, x):
    h = x
    for _ in range(STEPS):
        h = jnp.tanh(h @ p["fori/w"] + p["fori/b"])
    return h


def make_fori():
    return _linen_case(
        "fori_loop",
        ForiNet(),
        (3,),
        _inputs(10, (3,)),
        {
            "h": ({"fori/w", "fori/b"}, fori_h),
            "g": ({"fori/w", "fori/b", "fori/s"}, lambda c, p, x: fori_carry(p, x)[1]),
        },
    )


# ---------------------------------------------------------------------------------------------------------------
# 9. jax.lax.cond on a data-dependent predicate, both branches using parameters
# ---------------------------------------------------------------------------------------------------------------


class CondNet(nn.Module):
    """The predicate is computed from the whole batch, i.e. per example for the batch-of-one that a layersens split
    evaluates (and that the reference sees): it stays a real ``cond`` in the traced jaxpr."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        init = nn.initializers.normal(0.6)
        w1, b1 = self.param("w1", init, (c, c), jnp.float32), self.param("b1", init, (c,), jnp.float32)
        w2, s = self.param("w2", init, (c, c), jnp.float32), self.param("s", nn.initializers.ones, (c,), jnp.float32)
        h = jax.lax.cond(x.sum() > 0, lambda h: jnp.tanh(h @ w1 + b1), lambda h: (h @ w2) * s, x)
        self.sow("intermediates", "gated", h)
        return nn.Dense(2, name="head")(h)


def cond_gated(c, p, x):
    return jax.lax.cond(
        x.sum() > 0,
        lambda h: jnp.tanh(h @ p["w1"] + p["b1"]),
        lambda h: (h @ p["w2"]) * p["s"],
        x,
    )


def make_cond():
    x = _inputs(11, (3,))
    x[0] = np.abs(x[0])  # one example takes each branch
    x[1] = -np.abs(x[1])
    up = {"w1", "b1", "w2", "s"}
    return _linen_case(
        "cond",
        CondNet(),
        (3,),
        x,
        {"gated": (up, cond_gated), "head": (up | keys("head"), lambda c, p, x: dense(p, "head", cond_gated(c, p, x)))},
    )


# ---------------------------------------------------------------------------------------------------------------
# 10. nn.remat-ed block
# ---------------------------------------------------------------------------------------------------------------


class InnerBlock(nn.Module):
    @nn.compact
    def __call__(self, h):
        y = jnp.tanh(nn.Dense(3, name="dense1")(h))
        self.sow("intermediates", "inner", y)
        return h + nn.Dense(3, name="dense2")(y)


class RematNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(3, name="embed")(x)
        h = nn.remat(InnerBlock)(name="block")(h)
        return nn.Dense(2, name="head")(jnp.tanh(h))


def remat_inner(c, p, x):
    return jnp.tanh(dense(p, "block/dense1", dense(p, "embed", x)))


def remat_block(c, p, x):
    return dense(p, "embed", x) + dense(p, "block/dense2", remat_inner(c, p, x))


def make_remat():
    up = keys("embed", "block/dense1")
    return _linen_case(
        "remat",
        RematNet(),
        (2,),
        _inputs(12, (2,)),
        {"block/inner": (up, remat_inner), "block": (up | keys("block/dense2"), remat_block)},
    )


# ---------------------------------------------------------------------------------------------------------------
# 11. custom_vjp and custom_jvp activations
# ---------------------------------------------------------------------------------------------------------------


@jax.custom_vjp
def softplus_vjp(x):
    return jnp.logaddexp(x, 0.0)


def _softplus_fwd(x):
    return softplus_vjp(x), x


def _softplus_bwd(x, g):
    return (g * jax.nn.sigmoid(x),)


softplus_vjp.defvjp(_softplus_fwd, _softplus_bwd)


@jax.custom_jvp
def xtanh_jvp(x):
    return x * jnp.tanh(x)


@xtanh_jvp.defjvp
def _xtanh_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    th = jnp.tanh(x)
    return x * th, (th + x * (1 - th**2)) * t


class CustomVJPNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = softplus_vjp(nn.Dense(4, name="dense1")(x))
        self.sow("intermediates", "act", h)
        return nn.Dense(3, name="dense2")(h)


class CustomJVPNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = xtanh_jvp(nn.Dense(4, name="dense1")(x))
        self.sow("intermediates", "act", h)
        return nn.Dense(3, name="dense2")(h)


def plain_softplus(h):
    return jnp.log1p(jnp.exp(-jnp.abs(h))) + jnp.maximum(h, 0)


def vjp_act(c, p, x):
    return plain_softplus(dense(p, "dense1", x))


def jvp_act(c, p, x):
    h = dense(p, "dense1", x)
    return h * jnp.tanh(h)


def make_custom_vjp():
    return _linen_case(
        "custom_vjp",
        CustomVJPNet(),
        (3,),
        _inputs(13, (3,)),
        {
            "act": (keys("dense1"), vjp_act),
            "dense2": (keys("dense1", "dense2"), lambda c, p, x: dense(p, "dense2", vjp_act(c, p, x))),
        },
    )


def make_custom_jvp():
    return _linen_case(
        "custom_jvp",
        CustomJVPNet(),
        (3,),
        _inputs(14, (3,)),
        {
            "act": (keys("dense1"), jvp_act),
            "dense2": (keys("dense1", "dense2"), lambda c, p, x: dense(p, "dense2", jvp_act(c, p, x))),
        },
    )


# ---------------------------------------------------------------------------------------------------------------
# 12. Shared weights: one Dense applied twice; a tied embedding / unembedding on integer tokens
# ---------------------------------------------------------------------------------------------------------------


class TwiceNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        shared = nn.Dense(3, name="shared")
        h = jnp.tanh(shared(x))
        y = shared(h)
        self.sow("intermediates", "twice", y)
        return nn.Dense(2, name="head")(y)


def twice_once(c, p, x):
    return dense(p, "shared", x)


def twice_twice(c, p, x):
    return dense(p, "shared", jnp.tanh(dense(p, "shared", x)))


def make_twice():
    return _linen_case(
        "shared_dense",
        TwiceNet(),
        (3,),
        _inputs(15, (3,)),
        {"shared#0": (keys("shared"), twice_once), "twice": (keys("shared"), twice_twice)},
    )


VOCAB, WIDTH, TOKENS = 7, 4, 3


class TiedLM(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(VOCAB, WIDTH, name="embed")
        h = jnp.tanh(nn.Dense(WIDTH, name="mix")(embed(tokens)))
        logits = embed.attend(h)
        self.sow("intermediates", "logits", logits)
        return logits


def tied_logits(c, p, tokens):
    e = p["embed/embedding"]
    h = jnp.tanh(dense(p, "mix", e[tokens]))
    return h @ e.T


def make_tied():
    tokens = np.random.default_rng(16).integers(0, VOCAB, size=(2, TOKENS)).astype(np.int32)
    up = {"embed/embedding"} | keys("mix")
    return _linen_case(
        "tied_embedding",
        TiedLM(),
        (TOKENS,),
        tokens,
        {
            "logits": (up, tied_logits),
            "mix": (keys("mix") | {"embed/embedding"}, lambda c, p, t: dense(p, "mix", p["embed/embedding"][t])),
        },
        input_dtype="int32",
    )


# ---------------------------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[], Case]] = {
    "mlp": make_mlp,
    "bn_cnn": make_bncnn,
    "resnet": make_resnet,
    "transformer": make_transformer,
    "rnn_scan": make_rnn,
    "mix_scan": make_mix_scan,
    "linen_scan_layers": make_linen_scan_layers,
    "nnx_scan_layers": make_nnx_scan_layers,
    "while_loop": make_while,
    "fori_loop": make_fori,
    "cond": make_cond,
    "remat": make_remat,
    "custom_vjp": make_custom_vjp,
    "custom_jvp": make_custom_jvp,
    "shared_dense": make_twice,
    "tied_embedding": make_tied,
}

# Layer names per case, known without building the models (for pytest parametrization).
LAYERS: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden", "dense2"),
    "bn_cnn": ("act", "conv2"),
    "resnet": ("block1", "block2/conv2"),
    "transformer": ("attn", "output"),
    "rnn_scan": ("final", "acc"),
    "mix_scan": ("mixed", "readout"),
    "linen_scan_layers": ("stack_out", "head"),
    "nnx_scan_layers": ("stack_out", "output"),
    "while_loop": ("h_loop", "output"),
    "fori_loop": ("h", "g"),
    "cond": ("gated", "head"),
    "remat": ("block/inner", "block"),
    "custom_vjp": ("act", "dense2"),
    "custom_jvp": ("act", "dense2"),
    "shared_dense": ("shared#0", "twice"),
    "tied_embedding": ("mix", "logits"),
}

# The layers run through every mode: one per model, inside or after its control flow. Every layer of LAYERS gets
# the upstream-set and reference checks. Each layersens call compiles its own XLA programs (0.3-1.5 s per call on
# a 2-core CPU), so this table is the dial on the file's run time: all of LAYERS here takes about twice as long.
# rnn_scan's `final` (right upstream set, but structure lost across steps when a scan body is read once) and
# fori_loop's `g` (upstream leaves lost through the carry) cover the two ways a scan can be misread.
MODE_LAYERS: dict[str, tuple[str, ...]] = {
    "mlp": ("dense2",),
    "bn_cnn": ("act",),
    "resnet": ("block1",),
    "transformer": ("attn",),
    "rnn_scan": ("final",),
    "mix_scan": ("mixed",),
    "linen_scan_layers": ("stack_out",),
    "nnx_scan_layers": ("stack_out",),
    "while_loop": ("h_loop",),
    "fori_loop": ("g",),
    "cond": ("gated",),
    "remat": ("block",),
    "custom_vjp": ("act",),
    "custom_jvp": ("act",),
    "shared_dense": ("twice",),
    "tied_embedding": ("logits",),
}


@functools.lru_cache(maxsize=None)
def case(name: str) -> Case:
    built = BUILDERS[name]()
    assert set(built.layers) == set(LAYERS[name]), (name, set(built.layers))
    return built
