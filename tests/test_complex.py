"""Complex-valued layers and parameters under the three conventions (real, complex, holomorphic), each against an
independent computation in complex128: ``jax.jacrev``/``jacfwd`` of the real and imaginary parts split by hand,
``jax.jacrev(..., holomorphic=True)``, and central finite differences; the Wirtinger parts against their
definition ½(∂/∂x ∓ i ∂/∂y). Tolerances: float64/complex128 rtol 1e-10, atol 1e-12 (``TOL``); differences 1e-6.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from flax import nnx

import layersens
from layersens.examples import RBM_SPINS
from layersens_cli.main import main
from tests.conftest import TOL

C = dict(param_dtype=jnp.complex128, dtype=jnp.complex128)


class HoloMLP(nn.Module):
    """Complex parameters, complex layers, holomorphic in the parameters."""

    @nn.compact
    def __call__(self, x):
        z = jnp.tanh(nn.Dense(5, name="d1", **C)(x.astype(jnp.complex128)))
        self.sow("intermediates", "t1", z)
        return nn.Dense(3, name="d2", **C)(z)


class HoloConv(nn.Module):
    """A complex convolution (its kernel's channels colour in each part) and a holomorphic activation."""

    @nn.compact
    def __call__(self, x):
        z = jnp.sin(nn.Conv(4, (3, 3), name="conv", **C)(x.astype(jnp.complex128)))
        self.sow("intermediates", "act", z)
        return z.reshape(len(x), -1).sum(-1)


class Conjugating(nn.Module):
    """Not holomorphic: conj on the way."""

    @nn.compact
    def __call__(self, x):
        z = nn.Dense(3, name="d", **C)(x.astype(jnp.complex128))
        return jnp.conj(z) * jnp.tanh(z)


class RealToComplex(nn.Module):
    """Real parameters, complex output."""

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(3, name="d", param_dtype=jnp.float64)(x)
        return jnp.exp(1j * h) * (1 + h)


def make(module, input_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3,) + input_shape)
    variables = module.init(jax.random.key(seed), x)
    # move the parameters off their initial values (biases start at zero: a poor point to test at)
    leaves, tree = jax.tree.flatten(variables)
    leaves = [v + 0.3 * rng.standard_normal(v.shape) * (1j if jnp.iscomplexobj(v) else 1) + 0.2 for v in leaves]
    variables = jax.tree.unflatten(tree, [np.asarray(v, v.dtype) for v in leaves])
    model = layersens.from_linen(module, variables, input_shape, input_dtype="float64", example_inputs=x)
    return model, variables["params"], x, lambda p, xx: module.apply({"params": p}, xx[None])[0]


MODELS = {
    "holo_mlp": (HoloMLP(), (4,)),
    "holo_conv": (HoloConv(), (5, 5, 2)),
    "conjugating": (Conjugating(), (4,)),
    "real_to_complex": (RealToComplex(), (4,)),
}


def leaf(tree, name):
    for part in name.split("/"):
        tree = tree[part]
    return tree


def split_parts(params):
    return jax.tree.map(jnp.real, params), jax.tree.map(lambda v: jnp.imag(v) if jnp.iscomplexobj(v) else 0 * v, params)


def references(f, params, x, mode, layer_shape):
    """The stated Jacobian of each leaf per the convention, from plain jax.jacfwd/jacrev of the parts."""
    re, im = split_parts(params)
    complex_leaves = {n for n, v in flat(params).items() if jnp.iscomplexobj(v)}

    def g(re, im):
        return f(jax.tree.map(lambda a, b, v: a + 1j * b if jnp.iscomplexobj(v) else a, re, im, params), x)

    out = {}
    if mode == "real":
        dx, dy = jax.jacrev(lambda r, i: jnp.real(g(r, i)), argnums=(0, 1))(re, im)
        for n in flat(params):
            if n in complex_leaves:
                out[n + ".real"], out[n + ".imag"] = leaf(dx, n), leaf(dy, n)
            else:
                out[n] = leaf(dx, n)
        return out
    dx, dy = jax.jacfwd(g, argnums=(0, 1))(re, im)  # forward mode takes a complex output as it is
    for n in flat(params):
        if n in complex_leaves and mode == "complex":
            out[n] = 0.5 * (leaf(dx, n) - 1j * leaf(dy, n))
            out[f"conj({n})"] = 0.5 * (leaf(dx, n) + 1j * leaf(dy, n))
        else:
            out[n] = leaf(dx, n)
    if mode == "holomorphic" and complex_leaves == set(flat(params)):
        holo = jax.jacrev(lambda p: f(p, x), holomorphic=True)(params)
        for n in flat(params):
            np.testing.assert_allclose(leaf(holo, n), out[n], **TOL[np.float64])
    return out


def flat(params):
    return {"/".join(k.key for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


CASES = [
    ("holo_mlp", "real"),
    ("holo_mlp", "complex"),
    ("holo_mlp", "holomorphic"),
    ("holo_conv", "real"),
    ("holo_conv", "complex"),
    ("holo_conv", "holomorphic"),
    ("conjugating", "real"),
    ("conjugating", "complex"),
    ("real_to_complex", "real"),
    ("real_to_complex", "complex"),
    ("real_to_complex", "holomorphic"),
]


@pytest.mark.parametrize("name,mode", CASES)
def test_each_convention_against_plain_jax(name, mode):
    module, shape = MODELS[name]
    model, params, x, f = make(module, shape)
    split = layersens.split(model, "output", complex_mode=mode)
    jac = layersens.jacobian(split, x)
    assert jac.complex_mode == mode
    assert jac.dtype == ("float64" if mode == "real" else "complex128")
    for n, example in enumerate(x):
        want = references(f, params, example, mode, ())
        assert set(want) == set(jac.param_names)
        for leaf_name, value in want.items():
            np.testing.assert_allclose(jac[leaf_name][n], value, **TOL[np.float64], err_msg=leaf_name)
    values = np.stack([f(params, e) for e in x])
    np.testing.assert_allclose(jac.activation, np.real(values) if mode == "real" else values, **TOL[np.float64])


@pytest.mark.parametrize("mode", ["real", "complex", "holomorphic"])
def test_every_strategy_agrees_in_each_mode(mode):
    """Forward, reverse, per-leaf and channel colouring (the complex kernel's parts are channel-diagonal) give
    the same stated Jacobian."""
    model, params, x, f = make(*MODELS["holo_conv"])
    split = layersens.split(model, "act", complex_mode=mode)
    dense = layersens.jacobian(split, x, mode="forward")
    want = references(lambda p, e: jnp.sin(f_conv(p, e)), params, x[0], mode, ())
    for leaf_name, value in want.items():
        np.testing.assert_allclose(dense[leaf_name][0], value, **TOL[np.float64], err_msg=leaf_name)
    plan = layersens.plan(split, x, mode="structured")  # [Re h; Im h] keeps the channel axis (the stack rule)
    assert any(b.method.colouring for b in plan.blocks if "conv/kernel.real" in b.names), plan.table()
    for strategy in ("reverse", "per-leaf", "structured", "auto"):
        got = layersens.jacobian(split, x, mode=strategy)
        np.testing.assert_allclose(got.matrix, dense.matrix, **TOL[np.float64], err_msg=strategy)


def f_conv(params, x):
    return nn.Conv(4, (3, 3), **C).apply({"params": params["conv"]}, x.astype(jnp.complex128)[None])[0]


@pytest.mark.parametrize("name", ["holo_conv", "conjugating"])
def test_wirtinger_parts_against_central_differences(name):
    """∂h/∂x = D + D̄ and ∂h/∂y = i (D − D̄), each column against a central difference of the complex layer
    along the real and the imaginary direction of one parameter."""
    module, shape = MODELS[name]
    model, params, x, f = make(module, shape)
    jac = layersens.jacobian(layersens.split(model, "output", complex_mode="complex"), x[:1])
    rng = np.random.default_rng(1)
    eps = np.finfo(np.float64).eps ** (1 / 3)
    for n in flat(params):
        value = np.asarray(leaf(params, n))
        for _ in range(3):
            j = np.unravel_index(int(rng.integers(value.size)), value.shape)
            for direction, want in (
                (1, jac[n][0] + jac[f"conj({n})"][0]),
                (1j, 1j * (jac[n][0] - jac[f"conj({n})"][0])),
            ):
                step = np.zeros_like(value)
                step[j] = eps * direction
                up = f(jax.tree.map(lambda v: v, set_leaf(params, n, value + step)), x[0])
                down = f(set_leaf(params, n, value - step), x[0])
                np.testing.assert_allclose((up - down) / (2 * eps), want[(...,) + j], rtol=1e-6, atol=1e-7)


def set_leaf(params, name, value):
    out = jax.tree.map(lambda v: v, params)
    *path, last = name.split("/")
    node = out
    for part in path:
        node = node[part]
    node[last] = value
    return out


def test_holomorphic_layer_in_complex_mode_has_no_conjugate_part():
    model, params, x, f = make(*MODELS["holo_mlp"])
    wirtinger = layersens.jacobian(layersens.split(model, "t1", complex_mode="complex"), x)
    holo = layersens.jacobian(layersens.split(model, "t1", complex_mode="holomorphic"), x)
    assert wirtinger.param_names == ("d1/kernel", "conj(d1/kernel)", "d1/bias", "conj(d1/bias)")
    for n in holo.param_names:
        np.testing.assert_allclose(wirtinger[n], holo[n], **TOL[np.float64])
        np.testing.assert_allclose(wirtinger[f"conj({n})"], 0, atol=1e-15)


def test_not_holomorphic_is_refused_in_holomorphic_mode():
    model, *_ = make(*MODELS["conjugating"])
    with pytest.raises(
        layersens.SelectionError, match=r"layer 'output' is not holomorphic.*Cauchy–Riemann fails.*--complex complex"
    ):
        layersens.split(model, "output", complex_mode="holomorphic")


def test_complex_values_need_a_convention():
    model, *_ = make(*MODELS["holo_mlp"])
    with pytest.raises(layersens.SelectionError, match=r"leaf 'd1/kernel' is complex; choose .*--complex real"):
        layersens.split(model, "t1")
    model, *_ = make(*MODELS["real_to_complex"])
    with pytest.raises(layersens.SelectionError, match=r"layer 'output' is complex \(complex128\); choose"):
        layersens.split(model, "output")
    with pytest.raises(layersens.SelectionError, match=r"complex_mode is 'wirtinger'; choose one of real, complex"):
        layersens.split(model, "output", complex_mode="wirtinger")


def test_paths_that_take_real_jacobians(tmp_path):
    """The real convention is a real problem: the compressed form, the store and the summaries take it. The
    complex ones are taken by the compressed form and the store too (stated as the dense result is, see
    tests/test_complex_paths.py); the matrix-free paths refuse them with the way round."""
    model, params, x, f = make(*MODELS["holo_conv"])
    real = layersens.split(model, "act", complex_mode="real")
    dense = layersens.jacobian(real, x)
    compressed = layersens.compressed_jacobian(real, x)
    np.testing.assert_allclose(compressed.to_dense().matrix, dense.matrix, **TOL[np.float64])
    stored = layersens.stream_jacobian(real, x, tmp_path / "j.zarr")
    np.testing.assert_allclose(stored.load().matrix, dense.matrix, **TOL[np.float64])
    assert stored.complex_mode == "real" and stored.load().complex_mode == "real"
    sens = layersens.sensitivity(real, x)
    np.testing.assert_allclose(sens.frobenius, np.linalg.norm(dense.matrix, axis=(1, 2)), rtol=1e-9)
    stated = layersens.split(model, "act", complex_mode="complex")
    wirtinger = layersens.jacobian(stated, x)
    np.testing.assert_allclose(
        layersens.compressed_jacobian(stated, x).to_dense().matrix, wirtinger.matrix, **TOL[np.float64]
    )
    np.testing.assert_allclose(
        layersens.stream_jacobian(stated, x, tmp_path / "k.zarr").load().matrix, wirtinger.matrix, **TOL[np.float64]
    )
    message = r"takes real Jacobians, and complex_mode='complex' states a complex one.*--complex real"
    for call in (
        lambda: layersens.sensitivity(stated, x),
        lambda: layersens.spectrum(stated, x),
        lambda: layersens.products(stated, x, tangents=np.ones(stated.num_params)),
    ):
        with pytest.raises(layersens.SelectionError, match=message):
            call()


def test_saved_summarized_and_verified(tmp_path):
    """A complex Jacobian survives .npz with its convention; its singular values are those of the complex matrix
    (conjugate transpose), its norms use |·|; verify checks it through the real problem."""
    model, params, x, f = make(*MODELS["holo_mlp"])
    jac = layersens.extract(model, "output", x, complex_mode="holomorphic", verify=True, out=tmp_path / "j.npz")
    assert jac.verification.row_error < 1e-12 and jac.verification.difference_error < 1e-6
    back = layersens.load_jacobian(tmp_path / "j.npz")
    assert back.complex_mode == "holomorphic" and back.dtype == "complex128"
    np.testing.assert_array_equal(back.matrix, jac.matrix)
    summary = layersens.summarize(back)
    for n in range(len(x)):
        np.testing.assert_allclose(
            summary.singular_values[n], np.linalg.svd(back.matrix[n], compute_uv=False), rtol=1e-8
        )
    assert summary.frobenius == pytest.approx(float(np.sqrt(np.sum(np.abs(back.matrix) ** 2))), rel=1e-12)
    wirtinger = layersens.extract(model, "output", x, complex_mode="complex", verify=True)
    assert wirtinger.verification.row_error < 1e-12 and wirtinger.verification.difference_error < 1e-6


def test_nnx_complex_parameters():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(3, 4, param_dtype=jnp.complex128, dtype=jnp.complex128, rngs=rngs)

        def __call__(self, x):
            return jnp.exp(self.a(x.astype(jnp.complex128)))

    net = Net(nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((2, 3))
    model = layersens.from_nnx(net, (3,), input_dtype="float64", example_inputs=x)
    jac = layersens.jacobian(layersens.split(model, "output", complex_mode="holomorphic"), x)
    _, state = nnx.split(net, nnx.Param)
    params = nnx.to_pure_dict(state)
    graph = nnx.graphdef(net)

    def f(p, e):
        return nnx.merge(graph, nnx.State(jax.tree.map(lambda v: v, p)))(e[None])[0]

    for n, e in enumerate(x):
        want = jax.jacrev(lambda k: jnp.exp(e.astype(jnp.complex128) @ k + params["a"]["bias"]), holomorphic=True)(
            jnp.asarray(params["a"]["kernel"])
        )
        np.testing.assert_allclose(jac["a/kernel"][n], want, **TOL[np.float64])


@pytest.mark.parametrize("mode", ["real", "complex", "holomorphic"])
def test_shipped_complex_example_from_the_command_line(tmp_path, mode):
    """The complex RBM extracts, verifies and summarizes in each convention; without one it is refused."""
    out = tmp_path / f"{mode}.npz"
    runner = CliRunner()
    args = ["extract", "--layer", "output", "--model", str(RBM_SPINS), "--complex", mode, "--verify", "--out", out]
    result = runner.invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert f"complex mode '{mode}'" in result.output and "verify" in result.output
    assert ("complex64" if mode != "real" else "float32") in result.output
    summary = runner.invoke(main, ["summarize", str(out)])
    assert summary.exit_code == 0, summary.output
    expected = {"real": "kernel.imag", "complex": "conj(kernel)", "holomorphic": "kernel"}[mode]
    assert expected in summary.output
    if mode == "holomorphic":
        refused = runner.invoke(
            main, ["extract", "--layer", "output", "--model", str(RBM_SPINS), "--out", tmp_path / "n.npz"]
        )
        assert refused.exit_code == 1 and "--complex real|complex|holomorphic" in refused.stderr
