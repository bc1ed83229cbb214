"""Small re-creations of the model code in Flax's own examples, written the way their users write them.

Written fresh after reading google/flax (commit 18f8f311, July 2026): examples/mnist (the linen CNN of its history
before the NNX port, and the NNX CNN of examples/mnist/train.py and docs_nnx/mnist_tutorial), examples/imagenet/
models.py, examples/lm1b/models.py, examples/nnx_toy_examples/05_vae.py and 06_scan_over_layers.py. Architectures
and the way they are written (constructor arguments, auto-names, boxed params, Rngs kept in modules) are kept;
sizes are cut to 8×8 images and 6-token sequences (vocab 11). Checked with jax 0.10.2 / flax 0.12.8 on CPU.

Research note: what a tool computing d(layer activation)/d(upstream params) must cope with, per model
----------------------------------------------------------------------------------------------------------

MnistCNN (linen, 1,034 params). ``variables == {'params': ...}``, plain arrays. ``module.apply(variables, x,
capture_intermediates=True, mutable=['intermediates'])`` returns ``(y, {'intermediates': ...})`` with
``intermediates['Conv_0']['__call__'] == (array,)`` (a 1-tuple) for Conv_0, Conv_1, Dense_0, Dense_1 and the model
output under the top-level ``'__call__'``. The ReLUs, pools and the flatten are functions: they have no names and
cannot be captured without ``sow``/``nn.intercept_methods``. The module has no constructor arguments at all.

ResNet (linen, 1,934 params + 72 batch statistics). ``__call__(x, train=True)``: the default is *train* mode, so a
tool must pass ``train=False`` (``RESNET_CALL_KWARGS``). In train mode BatchNorm carries ``axis_name='batch'``:
``apply(..., train=True)`` outside pmap/shard_map raises ``NameError: unbound axis name: batch`` (with or without
``mutable=['batch_stats']``); ``init`` still works because BatchNorm skips the cross-device mean while initializing.
Variables: ``{'params', 'batch_stats'}``. Names: ``conv_init``, ``bn_init``, ``ResNetBlock_{i}/Conv_{0,1}``,
``ResNetBlock_{i}/BatchNorm_{0,1}``, and ``conv_proj``/``norm_proj`` only in blocks whose shape changes. Rebuilding
needs ``block_cls=ResNetBlock`` (a class), ``act`` (a function) and ``conv`` (a class): not JSON -- record a factory
(``make_resnet``) or the partial (``ResNetTiny``). ``dtype=jnp.float32`` is the default: with float64 params the
activations stay float32, yet ``jax.jacrev`` w.r.t. float64 params returns *float64* arrays (cotangent dtype follows
the params) with float32 accuracy (max diff 1.6e-7 against ``make_resnet(dtype=jnp.float64)``). Only the dtype of
the captured activation reveals it; the same holds for DecoderLM (``TransformerConfig.dtype``, 6.4e-7).

DecoderLM (linen, 1,339 params). ``TransformerConfig`` is a ``flax.struct.dataclass``: frozen, a pytree,
``config.replace(deterministic=True)`` makes the eval config; fields hold callables (``kernel_init``), so it is not
JSON. Dropout is switched by ``config.deterministic``, not by a call argument: ``init_decoder_lm`` builds the module
from the eval config, as lm1b does. Input: int32 token ids (batch, 6); token 0 is padding and is masked; inputs are
shifted right inside the model. Every param leaf of ``init`` is a ``flax.linen.spmd.LogicallyPartitioned`` box
(subclass of ``flax.core.meta.Partitioned``/``nn.meta.AxisMetadata``, a struct PyTreeNode with ``.value`` and
``.names``, e.g. ``('vocab', 'embed')``). Consequences: ``jax.tree.leaves`` sees through boxes to the arrays (so
``jax.tree.map`` keeps the boxes, see ``to_float64``), but a hand-written dict walk meets the box: ``box.shape`` is an
AttributeError and ``np.shape(box) == ()``. Unbox with ``flax.linen.meta.unbox(variables)`` (the same function as
``nn.unbox`` and ``flax.core.meta.unbox``): it returns plain nested dicts of arrays. ``module.apply`` gives identical
results on boxed and unboxed variables; ``jax.jacrev`` w.r.t. boxed params returns boxed Jacobian leaves, so unbox
before differentiating. ``nn.get_partition_spec(variables)`` gives the logical PartitionSpecs. Attention records
once, under ``decoderblock_{i}/MultiHeadDotProductAttention_0`` (with ``query``/``key``/``value`` of shape
(batch, len, heads, head_dim) and ``out`` below it); Dropout modules record their (identity) outputs too.

NnxMnistCNN (NNX, 1,058 params + 24 batch statistics). State: ``Param`` and ``BatchStat`` only; no RNG state,
because the Dropouts are built without ``rngs`` and take ``rngs`` in ``__call__(x, rngs=None)``. A fresh model is in
train mode: calling it without ``rngs`` raises ``ValueError: `deterministic` is False, but no `rngs` argument was
provided to Dropout``. Eval mode: ``model.eval()`` (in place, returns None; it is ``set_attributes(
deterministic=True, use_running_average=True, raise_if_not_found=False)``) or, as the NNX tutorial does,
``nnx.view(model, deterministic=True, use_running_average=True)``, a new module sharing the arrays. ``nnx.view``
raises ``ValueError: Unused keys found in nnx.view`` on a model without such attributes (the VAE) unless given
``raise_if_not_found=False`` (``nnx_eval``). ``self.avg_pool = functools.partial(nnx.avg_pool, ...)`` is a static
attribute in the graphdef. ``nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)`` returns
``(y, State)``; ``nnx.to_pure_dict`` of it is ``{'conv1': {'__call__': (array,)}, ..., '__call__': (y,)}``.

NnxVAE (NNX, 2,344 params). The encoder keeps the model's ``nnx.Rngs(seed, noise=seed + 1)`` as ``self.rngs``, so
the state holds ``encoder/rngs/{default,noise}/key`` (``nnx.RngKey``, shape (), dtype ``key<fry>``) and ``.../count``
(``nnx.RngCount``, uint32). ``np.dtype(key.dtype)`` raises ``TypeError: Cannot interpret 'key<fry>' as a data type``.
Filters that worked: ``nnx.state(model, nnx.Param)``; ``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``;
``nnx.split(model, nnx.Param, nnx.BatchStat, nnx.RngState, ...)`` (``nnx.RngState`` matches key and count; the last
State gets the leftovers such as kl_loss); ``nnx.state(model, nnx.Not(nnx.Param))``. The noise is drawn on every
call, in eval mode too: ``model.eval()`` changes nothing in the encoder, and each call advances the noise count, so
two calls of the same model differ. Merging a copy of fixed state (``nnx.merge(graphdef, params, rest, copy=True)``)
gives the same noise every time and leaves the original's counts alone: the Jacobian is then that of one fixed noise
draw. With ``jax_enable_x64`` on, ``jax.random.normal(key, shape)`` draws float64 noise, so the VAE's output is
float64 even for float32 params and inputs. The KL term: with ``kl_store='variable'`` (the example's way),
``self.kl_loss = KLLoss(kl)`` adds ``encoder/kl_loss`` (``KLLoss``, shape ()) to the state after the first forward
call; a fresh model lacks it, and ``nnx.capture(..., nnx.Intermediate)`` does not return it. With
``kl_store='sow'`` (``self.sow(nnx.Intermediate, 'kl_loss', kl)``): inside ``nnx.capture`` it comes back as
``{'encoder': {'kl_loss': (kl,)}}`` and the module is not touched; outside, each call emits a DeprecationWarning
and appends to an ``nnx.Intermediate`` attribute ``encoder/kl_loss`` whose value is a tuple (4 entries after 4
calls). ``nnx.pop(model, KLLoss)`` /
``nnx.pop(model, nnx.Intermediate)`` removes either, restoring the fresh structure.

NnxScanMLP (NNX, 352 params + 64 batch statistics). ``nnx.split_rngs(splits=n)`` + ``nnx.vmap(axis_size=n)`` build
ONE ``Block`` whose Variables carry a leading layer axis: ``layers/linear/kernel`` (4, 8, 8), ``layers/linear/bias``,
``layers/bn/{scale,bias}`` (Param) and ``layers/bn/{mean,var}`` (BatchStat), all (4, 8), and
``layers/dropout/rngs/{key,count}`` of shape (4,) (RngKey/RngCount; the Dropout keeps its own per-layer stream).
There are no per-layer names: layer i is index i of axis 0, and the Jacobian leaf for the kernel has shape
``activation.shape + (4, 8, 8)``. ``model.eval()`` sets the attributes on that one Block, so it covers every layer.
The forward traces to a single ``scan`` primitive. ``nnx.capture(..., method_outputs=nnx.Intermediate)`` does work
through ``nnx.scan``: ``layers/linear``, ``layers/bn``, ``layers/dropout`` and ``layers`` come back stacked as
(n_layers, batch, dim) -- layer axis first, batch axis 1 (``FlaxExample.batch_axis``).
The scan carry must keep its dtype: with float64 params a float32 input fails with ``TypeError: scan body function
carry input and carry output must have equal types`` (float32[1,8] in, float64[1,8] out); cast the input to the
params' dtype.

General. In ``jax.jacrev`` use ``nnx.merge(graphdef, *states, copy=True)``; without ``copy`` a train-mode BatchNorm
raises ``TraceContextError: Cannot mutate BatchStat from a different trace level``. With ``jax_enable_x64`` on
(tests/conftest.py), ``jax.random.uniform`` defaults to float64: a float64 batch through a train-mode float32
BatchNorm emits a FutureWarning about an unsafe scatter cast. ``jax.tree.map`` over an ``nnx.State`` keeps the
Variable types; skip typed keys with ``jnp.issubdtype(dtype, jnp.floating)`` (``to_float64``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from tests.compile_options import fast_jit

# ---------------------------------------------------------------------------------------------------------------
# linen: the MNIST CNN (examples/mnist before it moved to NNX). Features are hard-coded, as in the example, and
# the activations are plain functions, so only Conv_0/Conv_1/Dense_0/Dense_1 have names of their own.
# ---------------------------------------------------------------------------------------------------------------

MNIST_INPUT_SHAPE = (8, 8, 1)
MNIST_INPUT_DTYPE = "float32"


class MnistCNN(nn.Module):
    """conv → relu → avg-pool, twice, then two dense layers; 1,034 parameters for 8×8×1 digits."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(features=4, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.Conv(features=8, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))  # flatten
        x = nn.Dense(features=16)(x)
        x = nn.relu(x)
        x = nn.Dense(features=10)(x)
        return x


# ``init`` compiled as one program without XLA's backend optimizations (as the references of test_zoo and
# test_random_architectures are): an eager init compiles each of its operations on its own, and an optimized one
# takes seconds on CPU for what are random draws of a few thousand numbers (ResNet's: 8.7 s against 1.2 s). The
# values are the same random draws, to rounding; no test depends on them beyond their being the model's parameters.
def _init(module, *args):
    return fast_jit(module.init)(*args)


def init_mnist_cnn(seed: int = 0):
    """``(module, variables)``; variables is ``{'params': ...}`` only."""
    module = MnistCNN()
    variables = _init(module, jax.random.key(seed), jnp.ones((1,) + MNIST_INPUT_SHAPE, MNIST_INPUT_DTYPE))
    return module, variables


# ---------------------------------------------------------------------------------------------------------------
# linen: ResNet V1.5 (examples/imagenet/models.py). The block class, the conv class and the norm partial are
# constructor arguments; BatchNorm carries axis_name='batch' (only used in train mode, under pmap/shard_map).
# ---------------------------------------------------------------------------------------------------------------

RESNET_INPUT_SHAPE = (8, 8, 3)
RESNET_INPUT_DTYPE = "float32"

ModuleDef = Any


class ResNetBlock(nn.Module):
    """Two 3×3 convs with a (projected, when the shape changes) shortcut."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        shortcut = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if shortcut.shape != y.shape:
            shortcut = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(shortcut)
            shortcut = self.norm(name="norm_proj")(shortcut)
        return self.act(shortcut + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int
    num_filters: int = 64
    dtype: Any = jnp.float32
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            axis_name="batch",
        )
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = norm(name="bn_init")(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2**i, strides=strides, conv=conv, norm=norm, act=self.act)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return jnp.asarray(x, self.dtype)


# The example's own factories are partials; this is the small one.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1), block_cls=ResNetBlock)


def make_resnet(
    stage_sizes: Sequence[int] = (1, 1),
    block_cls: ModuleDef = ResNetBlock,
    num_classes: int = 10,
    num_filters: int = 4,
    dtype: Any = jnp.float32,
) -> ResNet:
    """The module only (1,934 parameters and 72 batch statistics at the defaults, for 8×8×3 inputs)."""
    return ResNet(
        stage_sizes=tuple(stage_sizes),
        block_cls=block_cls,
        num_classes=num_classes,
        num_filters=num_filters,
        dtype=dtype,
    )


def init_resnet(seed: int = 0, **kwargs):
    """``(module, variables)`` with ``params`` and ``batch_stats``. Like the example, init runs in train mode
    (the default ``train=True``); the batch statistics start at mean 0, var 1. Call it with ``train=False``."""
    module = make_resnet(**kwargs)
    variables = _init(module, {"params": jax.random.key(seed)}, jnp.ones((1,) + RESNET_INPUT_SHAPE, module.dtype))
    return module, variables


RESNET_CALL_KWARGS = {"train": False}


# ---------------------------------------------------------------------------------------------------------------
# linen: the lm1b decoder-only Transformer. Hyperparameters live in a frozen flax.struct dataclass passed as
# `config`; every parameter initializer is wrapped in nn.with_logical_partitioning, so `init` returns
# nn.LogicallyPartitioned boxes instead of arrays.
# ---------------------------------------------------------------------------------------------------------------

LM_SEQ_LEN = 6
LM_INPUT_SHAPE = (LM_SEQ_LEN,)
LM_INPUT_DTYPE = "int32"


@struct.dataclass
class TransformerConfig:
    """Frozen (flax.struct.dataclass); ``config.replace(deterministic=True)`` gives the eval config."""

    vocab_size: int = 11
    output_vocab_size: int = 11
    dtype: Any = jnp.float32
    emb_dim: int = 8
    num_heads: int = 2
    num_layers: int = 2
    qkv_dim: int = 8
    mlp_dim: int = 16
    max_len: int = 16
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    deterministic: bool = False
    kernel_init: Callable = nn.initializers.xavier_uniform()
    bias_init: Callable = nn.initializers.normal(stddev=1e-6)


def shift_right(x, axis: int = 1):
    """Prepend a 0 token and drop the last one (teacher forcing)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 0)
    padded = jnp.pad(x, pad, constant_values=0)
    return jax.lax.dynamic_slice_in_dim(padded, 0, padded.shape[axis] - 1, axis)


def sinusoidal_table(max_len: int, dim: int, min_scale: float = 1.0, max_scale: float = 10000.0):
    """Fixed position table of shape (1, max_len, dim), built in numpy: a constant, not a parameter."""
    half = dim // 2
    position = np.arange(max_len)[:, None]
    div = min_scale * np.exp(np.arange(half) * (-np.log(max_scale / min_scale) / (half - 1)))
    table = np.zeros((max_len, dim), np.float32)
    table[:, :half] = np.sin(position * div)
    table[:, half : 2 * half] = np.cos(position * div)
    return jnp.asarray(table[None])


def _logical(init, names):
    return nn.with_logical_partitioning(init, names)


class AddPositionEmbs(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, inputs):
        table = sinusoidal_table(self.config.max_len, inputs.shape[-1])
        return inputs + table[:, : inputs.shape[1], :]


class MlpBlock(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, inputs):
        cfg = self.config
        x = nn.Dense(
            cfg.mlp_dim,
            dtype=cfg.dtype,
            kernel_init=_logical(cfg.kernel_init, ("embed", "mlp")),
            bias_init=_logical(cfg.bias_init, ("mlp",)),
        )(inputs)
        x = nn.relu(x)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=cfg.deterministic)
        x = nn.Dense(
            inputs.shape[-1],
            dtype=cfg.dtype,
            kernel_init=_logical(cfg.kernel_init, ("mlp", "embed")),
            bias_init=_logical(cfg.bias_init, ("embed",)),
        )(x)
        return nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=cfg.deterministic)


def _layer_norm(cfg, name=None):
    return nn.LayerNorm(
        dtype=cfg.dtype,
        name=name,
        bias_init=_logical(nn.initializers.zeros, ("embed",)),
        scale_init=_logical(nn.initializers.ones, ("embed",)),
    )


class DecoderBlock(nn.Module):
    """Pre-LN self-attention and MLP, each with a residual."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, inputs, decoder_mask=None):
        cfg = self.config
        x = _layer_norm(cfg)(inputs)
        x = nn.MultiHeadDotProductAttention(
            num_heads=cfg.num_heads,
            dtype=cfg.dtype,
            qkv_features=cfg.qkv_dim,
            kernel_init=_logical(cfg.kernel_init, ("embed", "kv")),
            bias_init=_logical(cfg.bias_init, ("embed",)),
            use_bias=False,
            broadcast_dropout=False,
            dropout_rate=cfg.attention_dropout_rate,
            deterministic=cfg.deterministic,
        )(x, mask=decoder_mask)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=cfg.deterministic)
        x = x + inputs
        z = _layer_norm(cfg)(x)
        z = MlpBlock(config=cfg)(z)
        return x + z


class DecoderLM(nn.Module):
    """Decoder-only LM over token ids (batch, length); 1,339 parameters at the default config."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, inputs):
        cfg = self.config
        mask = nn.combine_masks(
            nn.make_attention_mask(inputs > 0, inputs > 0, dtype=cfg.dtype),  # padding (token 0)
            nn.make_causal_mask(inputs, dtype=cfg.dtype),
        )
        embed = nn.Embed(
            num_embeddings=cfg.output_vocab_size,
            features=cfg.emb_dim,
            embedding_init=_logical(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            name="embed",
        )
        y = embed(shift_right(inputs.astype("int32")))
        y = AddPositionEmbs(config=cfg, name="posembed_output")(y)
        y = nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=cfg.deterministic)
        y = y.astype(cfg.dtype)
        for layer in range(cfg.num_layers):
            y = DecoderBlock(config=cfg, name=f"decoderblock_{layer}")(y, decoder_mask=mask)
        y = _layer_norm(cfg, name="decoder_norm")(y)
        logits = nn.Dense(
            cfg.output_vocab_size,
            dtype=cfg.dtype,
            kernel_init=_logical(cfg.kernel_init, ("embed", "vocab")),
            bias_init=_logical(cfg.bias_init, ("vocab",)),
            name="logitdense",
        )(y)
        return logits.astype(cfg.dtype)


def init_decoder_lm(seed: int = 0, config: TransformerConfig | None = None, **config_overrides):
    """``(module, variables)``: the module is built from the *eval* config (``deterministic=True``), as lm1b
    does for init. ``variables['params']`` leaves are ``nn.LogicallyPartitioned`` boxes."""
    config = (config or TransformerConfig()).replace(deterministic=True, **config_overrides)
    module = DecoderLM(config)
    tokens = jnp.ones((1,) + LM_INPUT_SHAPE, LM_INPUT_DTYPE)
    variables = _init(module, jax.random.key(seed), tokens)
    return module, variables


def lm_tokens(n: int, seed: int = 0, config: TransformerConfig | None = None):
    """n token sequences with ids in [1, vocab), so no position is masked as padding."""
    vocab = (config or TransformerConfig()).vocab_size
    return jax.random.randint(jax.random.key(seed), (n,) + LM_INPUT_SHAPE, 1, vocab, dtype=LM_INPUT_DTYPE)


# ---------------------------------------------------------------------------------------------------------------
# NNX: the MNIST CNN of the NNX tutorial (docs_nnx/mnist_tutorial, examples/mnist/train.py). Dropout modules get
# no Rngs at construction; the caller passes `rngs` to __call__ in training and nothing in eval.
# ---------------------------------------------------------------------------------------------------------------

NNX_MNIST_INPUT_SHAPE = (8, 8, 1)
NNX_MNIST_INPUT_DTYPE = "float32"


class NnxMnistCNN(nnx.Module):
    """conv → dropout → batchnorm → relu → pool; conv → batchnorm → relu → pool; linear → dropout; linear."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(4, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.025)
        self.conv2 = nnx.Conv(4, 8, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(8, rngs=rngs)
        self.avg_pool = functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(2 * 2 * 8, 16, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=0.025)
        self.linear2 = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
        x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)  # flatten
        x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
        return self.linear2(x)


def make_nnx_mnist_cnn(seed: int = 0) -> NnxMnistCNN:
    """A fresh model in train mode (BatchNorm batch statistics, Dropout active), as the constructor leaves it."""
    return NnxMnistCNN(rngs=nnx.Rngs(seed))


# ---------------------------------------------------------------------------------------------------------------
# NNX: the VAE of examples/nnx_toy_examples/05_vae.py. The encoder keeps the Rngs it was built with and draws its
# reparameterization noise from the 'noise' stream on every call, in train and eval mode alike. The KL term is
# stored as module state during the forward pass: as in the example, by assigning a custom Variable subclass
# (kl_store='variable'), or with Module.sow into nnx.Intermediate (kl_store='sow').
# ---------------------------------------------------------------------------------------------------------------

VAE_IMAGE_SHAPE = (8, 8)
VAE_INPUT_SHAPE = VAE_IMAGE_SHAPE
VAE_INPUT_DTYPE = "float32"


class KLLoss(nnx.Variable):
    """A custom Variable type for the sown loss (the example's ``Loss``)."""


class Encoder(nnx.Module):
    def __init__(self, din: int, dmid: int, dout: int, *, kl_store: str = "variable", rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(din, dmid, rngs=rngs)
        self.linear_mean = nnx.Linear(dmid, dout, rngs=rngs)
        self.linear_std = nnx.Linear(dmid, dout, rngs=rngs)
        self.kl_store = kl_store
        self.rngs = rngs  # the same Rngs object the whole model was built with

    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        x = jax.nn.relu(self.linear1(x))
        mean = self.linear_mean(x)
        std = jnp.exp(self.linear_std(x))
        kl = jnp.mean(0.5 * jnp.mean(-jnp.log(std**2) - 1.0 + std**2 + mean**2, axis=-1))
        if self.kl_store == "sow":
            self.sow(nnx.Intermediate, "kl_loss", kl)
        else:
            self.kl_loss = KLLoss(kl)
        z = mean + std * jax.random.normal(self.rngs.noise(), mean.shape)
        return z


class Decoder(nnx.Module):
    def __init__(self, din: int, dmid: int, dout: int, *, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(din, dmid, rngs=rngs)
        self.linear2 = nnx.Linear(dmid, dout, rngs=rngs)

    def __call__(self, z):
        return self.linear2(jax.nn.relu(self.linear1(z)))


class NnxVAE(nnx.Module):
    def __init__(
        self,
        din: int,
        hidden_size: int,
        latent_size: int,
        output_shape: Sequence[int],
        *,
        kl_store: str = "variable",
        rngs: nnx.Rngs,
    ):
        self.output_shape = tuple(output_shape)
        self.encoder = Encoder(din, hidden_size, latent_size, kl_store=kl_store, rngs=rngs)
        self.decoder = Decoder(latent_size, hidden_size, int(np.prod(output_shape)), rngs=rngs)

    def __call__(self, x):
        z = self.encoder(x)
        logits = self.decoder(z)
        return jnp.reshape(logits, (-1, *self.output_shape))

    def generate(self, z):
        return nnx.sigmoid(jnp.reshape(self.decoder(z), (-1, *self.output_shape)))


def make_nnx_vae(seed: int = 0, kl_store: str = "variable") -> NnxVAE:
    """2,344 parameters; ``nnx.Rngs(seed, noise=seed + 1)`` as in the example."""
    return NnxVAE(
        din=int(np.prod(VAE_IMAGE_SHAPE)),
        hidden_size=16,
        latent_size=4,
        output_shape=VAE_IMAGE_SHAPE,
        kl_store=kl_store,
        rngs=nnx.Rngs(seed, noise=seed + 1),
    )


# ---------------------------------------------------------------------------------------------------------------
# NNX: scan over layers (examples/nnx_toy_examples/06_scan_over_layers.py). One Block object holds every layer's
# variables stacked on a leading axis (nnx.split_rngs + nnx.vmap at construction); __call__ runs them with nnx.scan.
# ---------------------------------------------------------------------------------------------------------------

SCAN_DIM = 8
SCAN_LAYERS = 4
SCAN_INPUT_SHAPE = (SCAN_DIM,)
SCAN_INPUT_DTYPE = "float32"


class Block(nnx.Module):
    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(dim, dim, rngs=rngs)
        self.bn = nnx.BatchNorm(dim, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return jax.nn.gelu(self.dropout(self.bn(self.linear(x))))


class NnxScanMLP(nnx.Module):
    def __init__(self, dim: int, *, n_layers: int, rngs: nnx.Rngs):
        self.n_layers = n_layers

        @nnx.split_rngs(splits=n_layers)
        @nnx.vmap(axis_size=n_layers)
        def create_block(rngs: nnx.Rngs):
            return Block(dim, rngs=rngs)

        self.layers = create_block(rngs)

    def __call__(self, x):
        @nnx.scan
        def scan_fn(x, block: Block):
            return block(x), None

        x, _ = scan_fn(x, self.layers)
        return x


def make_nnx_scan_mlp(seed: int = 0, dim: int = SCAN_DIM, n_layers: int = SCAN_LAYERS) -> NnxScanMLP:
    """352 parameters at the defaults (4 layers × (8×8 + 8 linear, 8 + 8 BatchNorm)); train mode."""
    return NnxScanMLP(dim, n_layers=n_layers, rngs=nnx.Rngs(seed))


# ---------------------------------------------------------------------------------------------------------------
# References through the models' own apply / call.
# ---------------------------------------------------------------------------------------------------------------

OUTPUT = "__output__"


def _pick(tree, layer: str, index: int):
    node = tree
    for part in layer.split("/"):
        node = node[part]
    if isinstance(node, dict):  # a module: capture_intermediates / method_outputs store it under __call__
        node = node["__call__"]
    if isinstance(node, (tuple, list)):  # sow and capture append to a tuple, one entry per call
        node = node[index]
    return node


def linen_reference(module, layer: str, *, index: int = 0, **call_kwargs) -> Callable:
    """``f(variables, x) -> activation`` for a batch ``x``, by the module's own ``apply``.

    ``layer`` is a submodule path (``'Conv_0'``, ``'decoderblock_0/MlpBlock_0'``), the name of a sown value
    (collection 'intermediates'), or ``OUTPUT`` for the model's output. Variables may be boxed.
    """

    def f(variables, x):
        y, state = module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"], **call_kwargs)
        if layer == OUTPUT:
            return y
        return _pick(state["intermediates"], layer, index)

    return f


def linen_param_jacobian(module, variables, x_one, layer: str, *, index: int = 0, **call_kwargs):
    """``jax.jacrev`` of one example's activation w.r.t. every ``params`` leaf (unboxed first): a dict tree of
    arrays of shape ``activation.shape + leaf.shape``. Differentiates all leaves, so keep models small."""
    variables = nn.meta.unbox(variables)
    rest = {k: v for k, v in variables.items() if k != "params"}
    f = linen_reference(module, layer, index=index, **call_kwargs)
    return jax.jacrev(lambda p: f({"params": p, **rest}, jnp.asarray(x_one)[None])[0])(variables["params"])


def nnx_eval(model):
    """An eval-mode view sharing the model's variables (what the NNX tutorial does for evaluation)."""
    return nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)


def nnx_reference(model, layer: str = OUTPUT, *, index: int = 0, **call_kwargs):
    """``(f, params, rest)``, ``f(params, rest, x) -> activation`` for a batch ``x``, by ``nnx.merge`` + call.

    ``params`` is ``nnx.State`` of ``nnx.Param``; ``rest`` is everything else (BatchStat, RNG keys and counts,
    sown state). Put the model in the mode you want first (``model.eval()`` or ``nnx_eval(model)``). ``layer``
    is a module path (``'conv1'``, ``'encoder/linear_mean'``), a sown name (``'encoder/kl_loss'``) or ``OUTPUT``.
    Each call merges a fresh copy, so the same ``rest`` gives the same noise, and the original model is not
    mutated (its RNG counts do not advance).
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def f(params, rest, x):
        m = nnx.merge(graphdef, params, rest, copy=True)
        if layer == OUTPUT:
            return m(x, **call_kwargs)
        _, captured = nnx.capture(m, nnx.Intermediate, method_outputs=nnx.Intermediate)(x, **call_kwargs)
        return _pick(nnx.to_pure_dict(captured), layer, index)

    return f, params, rest


def nnx_param_jacobian(model, x_one, layer: str = OUTPUT, *, index: int = 0, batch_axis: int = 0):
    """``jax.jacrev`` of one example's activation w.r.t. the model's ``nnx.Param`` state (an ``nnx.State``).

    ``batch_axis=1`` for values captured inside ``nnx.scan`` (they come back as (layers, batch, ...))."""
    f, params, rest = nnx_reference(model, layer, index=index)
    return jax.jacrev(lambda p: jnp.take(f(p, rest, jnp.asarray(x_one)[None]), 0, axis=batch_axis))(params)


def to_float64(tree):
    """Casts floating leaves (also inside linen boxes and nnx.State) to float64; keys and ints are untouched."""

    def cast(a):
        if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating):
            return a.astype(jnp.float64)
        return a

    return jax.tree.map(cast, tree)


def nnx_to_float64(model):
    """A float64 copy of an NNX model (Params, BatchStats, sown floats); RNG keys and counts are kept."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, to_float64(state))


# ---------------------------------------------------------------------------------------------------------------
# A catalogue for tests: how to build each model, what it takes, and layers known to exist.
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlaxExample:
    name: str
    framework: str  # 'linen' or 'nnx'
    build: Callable  # linen: seed -> (module, variables); nnx: seed -> module (train mode)
    input_shape: tuple
    input_dtype: str
    call_kwargs: dict  # linen call arguments that select evaluation mode
    layers: tuple  # layer paths valid for linen_reference / nnx_reference
    batch_axis: dict = dataclasses.field(default_factory=dict)  # layer -> batch axis of its value, if not 0


EXAMPLES = {
    "mnist_cnn": FlaxExample(
        "mnist_cnn",
        "linen",
        init_mnist_cnn,
        MNIST_INPUT_SHAPE,
        MNIST_INPUT_DTYPE,
        {},
        ("Conv_0", "Conv_1", "Dense_0", "Dense_1"),
    ),
    "resnet": FlaxExample(
        "resnet",
        "linen",
        init_resnet,
        RESNET_INPUT_SHAPE,
        RESNET_INPUT_DTYPE,
        RESNET_CALL_KWARGS,
        ("conv_init", "bn_init", "ResNetBlock_0", "ResNetBlock_1/BatchNorm_0", "ResNetBlock_1/norm_proj", "Dense_0"),
    ),
    "decoder_lm": FlaxExample(
        "decoder_lm",
        "linen",
        init_decoder_lm,
        LM_INPUT_SHAPE,
        LM_INPUT_DTYPE,
        {},
        (
            "embed",
            "decoderblock_0/MultiHeadDotProductAttention_0",
            "decoderblock_0/MlpBlock_0",
            "decoderblock_1",
            "decoder_norm",
            "logitdense",
        ),
    ),
    "nnx_mnist_cnn": FlaxExample(
        "nnx_mnist_cnn",
        "nnx",
        make_nnx_mnist_cnn,
        NNX_MNIST_INPUT_SHAPE,
        NNX_MNIST_INPUT_DTYPE,
        {},
        ("conv1", "batch_norm1", "conv2", "batch_norm2", "linear1", "linear2"),
    ),
    "nnx_vae": FlaxExample(
        "nnx_vae",
        "nnx",
        make_nnx_vae,
        VAE_INPUT_SHAPE,
        VAE_INPUT_DTYPE,
        {},
        ("encoder/linear1", "encoder/linear_mean", "encoder", "decoder/linear1", "decoder"),
    ),
    "nnx_scan_mlp": FlaxExample(
        "nnx_scan_mlp",
        "nnx",
        make_nnx_scan_mlp,
        SCAN_INPUT_SHAPE,
        SCAN_INPUT_DTYPE,
        {},
        (OUTPUT, "layers/linear", "layers/bn", "layers"),
        {"layers/linear": 1, "layers/bn": 1, "layers": 1},  # stacked (n_layers, batch, dim)
    ),
}
