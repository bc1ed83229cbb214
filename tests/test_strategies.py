"""Every strategy against every other, on linen and NNX models with conv, dense, normalization, pooling and
residual layers; and the channel-structure analysis that the coloured strategies rely on."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import layersens
from tests.conftest import TOL, ForcedBlocks, cpu_policy
from tests.tiny_models import TinyCNN, TinyCNNNNX, random_linen_variables

STRATEGIES = {
    "fwd": layersens.Forward(),
    "rev": layersens.Reverse(),
    "per-leaf": layersens.PerLeaf(),
    "structured": layersens.Structured(),
    "auto": layersens.Auto(),
    "rev-chunk7": layersens.Reverse(chunk_size=7),
    "structured-chunk2": layersens.Structured(chunk_size=2),
}


def linen_model():
    module = TinyCNN()
    return layersens.from_linen(
        module, random_linen_variables(module, (6, 6, 1)), (6, 6, 1), call_kwargs={"train": False}
    )


def nnx_model():
    model = TinyCNNNNX(rngs=nnx.Rngs(1))
    # nontrivial BatchNorm statistics, so normalization is not the identity
    model.bn.mean[...] = jnp.linspace(-0.5, 0.5, 3, dtype=jnp.float32)
    model.bn.var[...] = jnp.linspace(0.5, 2.0, 3, dtype=jnp.float32)
    return layersens.from_nnx(model, (6, 6, 1))


MODELS = {"linen": linen_model, "nnx": nnx_model}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


@pytest.mark.parametrize("layer", ["act", "output"])
def test_every_strategy_agrees_with_every_other(model, layer):
    split = layersens.split(model, layer)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 1)).astype(np.float32)
    results = {name: layersens.jacobian(split, x, mode=s) for name, s in STRATEGIES.items()}
    reference = jnp.stack(
        [
            jnp.concatenate(
                [
                    jnp.reshape(j, (split.num_outputs, -1))
                    for j in jax.jacfwd(lambda p: split.apply(p, xi))(split.params).values()
                ],
                axis=1,
            )
            for xi in x
        ]
    )
    # jax.jacfwd returns leaves in sorted-key order; reorder to the split's column order
    sizes = {k: int(np.size(v)) for k, v in split.params.items()}
    starts = dict(zip(sorted(sizes), np.cumsum([0] + [sizes[k] for k in sorted(sizes)])))
    reference = np.concatenate(
        [np.asarray(reference)[:, :, starts[k] : starts[k] + sizes[k]] for k in split.param_names], axis=2
    )
    for name, jac in results.items():
        np.testing.assert_allclose(jac.matrix, reference, **TOL[np.float32], err_msg=name)
    for (a, ja), (b, jb) in itertools.combinations(results.items(), 2):
        np.testing.assert_allclose(ja.matrix, jb.matrix, **TOL[np.float32], err_msg=f"{a} vs {b}")


def test_structure_found_where_channels_are_separate(model):
    x = jnp.zeros((6, 6, 1))
    found = {
        layer: set(layersens.channel_structure(layersens.split(model, layer), x))
        for layer in ("act", "res", "head", "output")
    }
    assert found["act"] == {"conv/kernel", "conv/bias", "bn/scale", "bn/bias"}
    assert found["res"] == {"res/kernel", "res/bias"}  # conv/bn feed 'res' through its input channels: mixed
    assert found["head"] == {"head/kernel", "head/bias"}
    assert found["output"] == {"head/kernel", "head/bias"}  # side branch is summed over its channels: mixed


class Mixers(nn.Module):
    """Operations that must lose channel structure: a residual sum over channels, a transpose of the channel
    axis into a reduction, a grouped convolution's input, and a channel-axis pooling window."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(4, (3, 3), padding="SAME", name="conv")(x)
        self.sow("intermediates", "sum_channels", h + h.mean(-1, keepdims=True))
        self.sow("intermediates", "pool_channels", nn.max_pool(h[..., None], (1, 1, 2), strides=(1, 1, 2))[..., 0])
        g = nn.Conv(4, (3, 3), padding="SAME", feature_group_count=2, name="grouped")(h)
        self.sow("intermediates", "roll", jnp.roll(h, 1, axis=-1))
        return g


def test_structure_is_lost_where_channels_mix():
    module = Mixers()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 5, 5, 2)))
    model = layersens.from_linen(module, variables, (5, 5, 2))
    x = jnp.ones((5, 5, 2))
    for layer in ("sum_channels", "pool_channels", "roll"):
        assert layersens.channel_structure(layersens.split(model, layer), x) == {}, layer
    grouped = layersens.channel_structure(layersens.split(model, "grouped"), x)
    # the grouped conv's own kernel and bias act one output channel at a time; its input mixes a group's channels
    assert set(grouped) == {"grouped/kernel", "grouped/bias"}
    xs = np.random.default_rng(0).normal(size=(1, 5, 5, 2)).astype(np.float32)
    for layer in ("sum_channels", "pool_channels", "roll", "grouped"):
        split = layersens.split(model, layer)
        a = layersens.jacobian(split, xs, mode="auto").matrix
        b = layersens.jacobian(split, xs, mode="fwd").matrix
        np.testing.assert_allclose(a, b, **TOL[np.float32], err_msg=layer)


def test_auto_plans_by_shape_on_the_shipped_example(lenet_linen):
    x = lenet_linen.example_inputs[0]
    methods = {}
    for layer in ("relu1", "relu2", "fc1"):
        methods[layer] = layersens.plan(layersens.split(lenet_linen, layer), x).methods
    assert set(methods["relu1"].values()) == {"fwd-colour"}
    # conv1's channels stay apart up to conv2: one grouped conv2 per within-channel index, not one conv2 per column
    assert methods["relu2"]["conv1/kernel"] == "fwd-separated" and methods["relu2"]["conv2/kernel"] == "fwd-colour"
    # every conv leaf of fc1 is separated up to fc1's contraction; fc1's own leaves: one row-coloured pullback
    # instead of 128 dense rows of 200,832 mostly-zero entries
    assert methods["fc1"]["conv2/kernel"] == "fwd-separated" and methods["fc1"]["fc1/kernel"] == "rev-colour"
    # without structure, neither
    per_leaf = layersens.plan(layersens.split(lenet_linen, "fc1"), x, mode="per-leaf").methods
    assert set(per_leaf.values()) <= {"fwd", "rev"}


def test_structured_matches_dense_on_lenet_relu2_and_fc1(lenet_linen):
    x = lenet_linen.example_inputs[:1]
    for layer, dense in (("relu2", "fwd"), ("fc1", "rev")):
        split = layersens.split(lenet_linen, layer)
        a = layersens.jacobian(split, x, mode="structured")
        b = layersens.jacobian(split, x, mode=dense)
        assert "colour" in a.mode
        np.testing.assert_allclose(a.matrix, b.matrix, **TOL[np.float32], err_msg=layer)


def test_unknown_mode_lists_the_names(lenet_linen):
    with pytest.raises(
        layersens.ModeError,
        match=r"mode 'fast' is not known; choose one of auto, forward, reverse, "
        r"per-leaf, structured\.",
    ):
        layersens.jacobian(layersens.split(lenet_linen, "relu1"), lenet_linen.example_inputs[:1], mode="fast")


@pytest.mark.parametrize("layer", ["act", "output"])
def test_compressed_form_converts_losslessly_to_dense(model, layer):
    split = layersens.split(model, layer)
    x = np.random.default_rng(3).normal(size=(2, 6, 6, 1)).astype(np.float32)
    compressed = layersens.compressed_jacobian(split, x, mode=layersens.Structured(chunk_size=1))
    assert set(compressed.channel_blocks) == set(layersens.channel_structure(split, jnp.asarray(x[0])))
    dense = layersens.jacobian(split, x, mode="fwd")
    np.testing.assert_allclose(compressed.to_dense().matrix, dense.matrix, **TOL[np.float32])
    assert compressed.to_dense().param_names == dense.param_names


def test_compressed_relu1_is_twenty_times_smaller(lenet_linen):
    split = layersens.split(lenet_linen, "relu1")
    x = lenet_linen.example_inputs[:1]
    compressed = layersens.compressed_jacobian(split, x)
    assert compressed.dense_part.num_params == 0
    assert compressed.channel_blocks["conv1/kernel"].shape == (1, 28, 28, 20, 9)
    dense = layersens.jacobian(split, x)
    assert dense.nbytes == 20 * compressed.nbytes
    np.testing.assert_array_equal(compressed.to_dense().matrix, dense.matrix)


def _jacfwd_reference(split, xs):
    flat = lambda p, x: jnp.concatenate(  # noqa: E731
        [
            jnp.reshape(j, (split.num_outputs, -1))
            for j in (lambda jac: [jac[k] for k in split.param_names])(jax.jacfwd(lambda q: split.apply(q, x))(p))
        ],
        axis=1,
    )
    return np.stack([np.asarray(flat(split.params, x)) for x in xs])


def test_row_colouring_in_chunks_over_leaves_that_are_not_adjacent(model):
    from layersens.planning import Block, ColumnColouring, DenseReverse, RowColouring

    split = layersens.split(model, "act")  # 6×6×3: 36 positions × 3 channels, every leaf channel-diagonal
    names = split.param_names
    assert len(names) == 4
    rows, rest = (names[0], names[2]), (names[1], names[3])
    strategy = ForcedBlocks(
        [Block(rows, RowColouring(), 5), Block((rest[0],), ColumnColouring(), 1), Block((rest[1],), DenseReverse(), 7)]
    )
    xs = np.random.default_rng(4).normal(size=(2, 6, 6, 1)).astype(np.float32)
    result = layersens.jacobian(split, xs, mode=strategy)
    assert result.mode == f"rev-colour[{'+'.join(rows)}], fwd-colour[{rest[0]}], rev[{rest[1]}]"
    np.testing.assert_allclose(result.matrix, _jacfwd_reference(split, xs), **TOL[np.float32])


class ChannelsFirst(nn.Module):
    """A layer whose channel axis is not last: the conv output transposed to (C, H, W)."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(3, (3, 3), padding="SAME", name="conv")(x)
        h = jnp.transpose(h, (0, 3, 1, 2))
        self.sow("intermediates", "chw", jnp.tanh(h))
        return h.sum()


def test_column_colouring_where_the_channel_axis_is_first():
    module = ChannelsFirst()
    model = layersens.from_linen(module, random_linen_variables(module, (4, 5, 2)), (4, 5, 2))
    split = layersens.split(model, "chw")
    xs = np.random.default_rng(5).normal(size=(2, 4, 5, 2)).astype(np.float32)
    structure = layersens.channel_structure(split, jnp.asarray(xs[0]))
    assert {s.output_axis for s in structure.values()} == {0} and set(structure) == set(split.param_names)
    for mode in (layersens.Structured(), layersens.Structured(chunk_size=2)):
        result = layersens.jacobian(split, xs, mode=mode)
        assert result.mode == "fwd-colour"
        np.testing.assert_allclose(result.matrix, _jacfwd_reference(split, xs), **TOL[np.float32])


def test_pass_cost_counts_only_what_depends_on_the_leaves(lenet_linen):
    flops = layersens.analysis.analyze(layersens.split(lenet_linen, "fc1")).cost.flops
    fc1_matmul = 2 * 1568 * 128  # fc1's kernel reaches the layer through one (1568,) × (1568, 128) product
    assert fc1_matmul <= flops(["fc1/kernel"]) < 1.1 * fc1_matmul
    conv2 = 2 * 14 * 14 * 32 * 3 * 3 * 20
    assert flops(["conv1/kernel"]) > flops(["conv2/kernel"]) > conv2 + fc1_matmul
    # conv2's input and kernel both depend on these: two derivative convolutions instead of one
    both = flops(["conv1/kernel", "conv2/kernel"])
    assert conv2 <= both - flops(["conv1/kernel"]) < 1.1 * conv2


@pytest.mark.parametrize("layer", ["act", "output"])
def test_one_example_built_on_the_device_equals_host_placement(model, layer, monkeypatch):
    x = np.random.default_rng(6).normal(size=(1, 6, 6, 1)).astype(np.float32)
    for name in ("fwd", "rev", "structured"):
        device_built = layersens.jacobian(layersens.split(model, layer), x, mode=name)
        cpu_policy(monkeypatch, device_dense_max_bytes=0)  # the zeroed host array + placed nonzeros
        host_placed = layersens.jacobian(layersens.split(model, layer), x, mode=name)
        monkeypatch.undo()
        np.testing.assert_allclose(device_built.matrix, host_placed.matrix, **TOL[np.float32], err_msg=name)
        np.testing.assert_array_equal(device_built.activation, host_placed.activation)
        assert not device_built.matrix.flags.writeable and not host_placed.matrix.flags.writeable
