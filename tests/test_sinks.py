"""Sinks: one interface (begin, put, finish) that any result is made through, each basis vector handed over once."""

import collections

import numpy as np
import pytest

import layersens
from layersens.compute import Layout
from tests.conftest import cpu_policy


@pytest.fixture(scope="module")
def split(tiny_cnn):
    return layersens.split(tiny_cnn, "act")


X = np.random.default_rng(7).normal(size=(2, 6, 6, 1)).astype(np.float32)


class Recording(layersens.Sink):
    """Records which basis vectors of which leaves each block covers, and sums the squares it is given."""

    def begin(self, job):
        self.covered = collections.defaultdict(list)
        self.squares = 0.0
        self.job = job

    def put(self, block):
        self.covered[block.example, block.layout, block.names].append((block.offset, block.offset + block.width))
        self.squares += float(np.sum(np.square(block.values, dtype=np.float64)))

    def finish(self, done):
        return self


@pytest.mark.parametrize(
    "mode",
    [
        layersens.Forward(chunk_size=7),
        layersens.Reverse(chunk_size=5),
        layersens.Structured(chunk_size=2),
        layersens.Auto(),
    ],
)
def test_every_basis_vector_reaches_the_sink_once(split, mode):
    """Chunk widths that do not divide the basis make the last chunk overlap the one before; the sink must still
    see each basis vector once, so that a sink may accumulate (norms, sums) without double counting."""
    recorded = layersens.compute.run(split, X, Recording(), mode=mode)
    dense = layersens.jacobian(split, X, mode=mode)
    for (_example, layout, names), ranges in recorded.covered.items():
        ranges = sorted(ranges)
        assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])), (layout, names, ranges)
    np.testing.assert_allclose(recorded.squares, np.sum(np.square(dense.matrix, dtype=np.float64)), rtol=1e-5)


def test_a_whole_matrix_goes_only_to_sinks_that_take_one(split):
    recorded = layersens.compute.run(split, X[:1], Recording(), mode="forward")
    assert all(layout is not Layout.WHOLE for _, layout, _ in recorded.covered)
    assert layersens.DenseSink.whole_matrix and not Recording.whole_matrix


def test_a_block_trimmed_after_an_offset_keeps_its_later_vectors():
    values = np.arange(24.0).reshape(4, 6)
    block = layersens.compute.JacobianBlock(0, Layout.COLUMNS, ("w",), 10, values)
    trimmed = block.after(13)
    assert trimmed.offset == 13 and trimmed.width == 3
    np.testing.assert_array_equal(trimmed.values, values[:, 3:])
    assert block.after(5) is block


@pytest.mark.parametrize(
    "layer,mode", [("act", "structured"), ("act", "reverse"), ("res", "structured"), ("head", "structured")]
)
def test_compressed_examples_side_by_side_in_small_groups(tiny_cnn, monkeypatch, layer, mode):
    """The compressed form of examples side by side (one program per group, ``_compressed_examples``), in groups
    of two with the last topped up, equals the dense Jacobian: column and row colouring, dense columns and rows
    (float32: rtol/atol 2e-5)."""
    from layersens.compute import _compressed_examples

    split = layersens.split(tiny_cnn, layer)
    x = np.random.default_rng(3).normal(size=(5, 6, 6, 1)).astype(np.float32)
    prepared = layersens.prepare(split, x, mode=mode)
    plan = prepared.programs()[0].plan
    coloured = {n: prepared.structure[n] for b in plan.blocks if b.method.colouring for n in b.names}
    per_example = _compressed_examples.example_bytes(split, coloured)
    cpu_policy(monkeypatch, group_max_bytes=2 * per_example, in_flight=2)  # and one group dispatched ahead
    seen = []
    compressed = prepared.run(x, sink=layersens.compute.CompressedSink(), progress=lambda d, t: seen.append((d, t)))
    dense = layersens.jacobian(split, x, mode=mode)
    np.testing.assert_allclose(compressed.to_dense().matrix, dense.matrix, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(compressed.dense_part.activation, dense.activation, rtol=2e-5, atol=2e-5)
    if prepared.programs()[0].fused is not None:
        assert seen == [(1, 3), (2, 3), (3, 3)]  # 2 + 2 + 1 (topped up)


def test_compressed_examples_keep_a_budget_given(tiny_cnn):
    """Examples side by side multiply one example's working memory: a max_memory given bounds the group."""
    split = layersens.split(tiny_cnn, "act")
    x = np.random.default_rng(4).normal(size=(6, 6, 6, 1)).astype(np.float32)
    programs = layersens.prepare(split, x).programs()[0]
    # the plan's estimate (not XLA's smaller count) must fit for one chunk; twice XLA's count sizes the group
    estimate = max(b.width * b.bytes_per_vector for b in programs.plan.blocks)
    budget = max(estimate, 2 * programs.working)
    prepared = layersens.prepare(split, x, max_memory=budget)
    assert prepared.programs()[0].fused is not None
    seen = []
    compressed = prepared.run(x, sink=layersens.compute.CompressedSink(), progress=lambda d, t: seen.append((d, t)))
    group = -(-6 // -(-6 // max(1, budget // programs.working)))
    assert group < 6 and seen[-1] == (-(-6 // group),) * 2  # groups within the budget, not all six at once
    dense = layersens.jacobian(split, x)
    np.testing.assert_allclose(compressed.to_dense().matrix, dense.matrix, rtol=2e-5, atol=2e-5)
