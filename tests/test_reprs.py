"""Every public object prints as a short summary (never its arrays) and as an HTML table in notebooks."""

import numpy as np
import pytest

import layersens


@pytest.fixture(scope="module")
def objects(tiny_cnn):
    model = tiny_cnn
    split = layersens.split(model, "act")
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 1)).astype(np.float32)
    jac = layersens.jacobian(split, x)
    return {
        "model": model,
        "split": split,
        "layer": layersens.list_layers(model)[0],
        "plan": layersens.plan(split, x),
        "prepared": layersens.prepare(split, x),
        "jacobian": jac,
        "compressed": layersens.compressed_jacobian(split, x),
        "operator": layersens.linearize(split, x),
        "readout": layersens.readout_gradient(split, x),
        "summary": layersens.summarize(jac),
    }


@pytest.mark.parametrize(
    "name", ["model", "split", "layer", "plan", "prepared", "jacobian", "compressed", "operator", "readout", "summary"]
)
def test_reprs_are_short_summaries_without_arrays(objects, name):
    obj = objects[name]
    text = repr(obj)
    assert len(text) < 1000, text
    assert text.startswith(type(obj).__name__ + "(")
    assert "array(" not in text and "Array(" not in text and "[[" not in text, text
    if hasattr(obj, "_repr_html_"):
        assert obj._repr_html_().startswith(("<table>", "<pre>"))


def test_reprs_name_what_the_object_is(objects):
    assert "matrix=float32[3, 108, 36]" in repr(objects["jacobian"]) and "layer='act'" in repr(objects["jacobian"])
    assert "layer='act'" in repr(objects["split"]) and "wrt='parameters'" in repr(objects["split"])
    assert "<th style='text-align:left'>matrix</th>" in objects["jacobian"]._repr_html_()


def test_a_jacobian_as_xarray_has_named_dimensions_per_leaf(objects):
    xr = pytest.importorskip("xarray")
    jac = objects["jacobian"]
    ds = jac.to_xarray()
    assert isinstance(ds, xr.Dataset) and set(ds.data_vars) == set(jac.param_names) | {"activation"}
    kernel = ds["conv/kernel"]
    assert kernel.dims == ("example", "height", "width", "channel") + tuple(f"conv/kernel_axis{k}" for k in range(4))
    np.testing.assert_array_equal(kernel.values, jac["conv/kernel"])
    assert ds["activation"].dims == ("example", "height", "width", "channel")
