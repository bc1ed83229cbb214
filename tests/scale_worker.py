"""Worker processes for tests/test_scale.py: JAX must be configured (device count, distributed run) before it starts,
so these run in processes of their own.

    python -m tests.scale_worker devices OUT_DIR          (with XLA_FLAGS giving 8 CPU devices)
    python -m tests.scale_worker process ID PORT STORE    (one of two processes on 127.0.0.1:PORT)
"""

from __future__ import annotations

import json
import sys


def devices(out_dir: str) -> None:
    """1 device against several, 3 examples in memory: a coloured layer on 3 devices (the examples side by side)
    and a chunked one on 8 (fewer examples than devices: one example at a time with its chunks side by side, each
    example in turn): the two ways lanes are filled; and a store of a third kind of layer (relu2: coloured and
    dense columns) on 8 devices."""
    import numpy as np

    import layersens
    from layersens.examples import LENET_DIGITS

    model = layersens.load_model(LENET_DIGITS)
    report = {"devices": len(__import__("jax").devices()), "cases": []}
    x = model.example_inputs[:3]
    ones = []
    for layer, count in (("relu1", 3), ("fc1", 8)):
        split = layersens.split(model, layer)
        one = layersens.jacobian(split, x, max_memory="16MB")
        ones.append((split, one))
        scale = float(np.abs(one.matrix).max())
        many = layersens.jacobian(split, x, max_memory="16MB", devices=count)
        report["cases"].append(
            {
                "layer": layer,
                "examples": len(x),
                "devices": count,
                "device": many.device,
                "error": float(np.abs(many.matrix - one.matrix).max()) / scale,
                "activation_error": float(np.abs(many.activation - one.activation).max()),
            }
        )
    # one device other than the first, for the whole-matrix program (relu1: one chunk) and the chunked one (fc1),
    # against the same programs' results on the first device above
    report["cpu5"] = [
        float(np.abs(layersens.jacobian(s, x, device="cpu:5", max_memory="16MB").matrix - one.matrix).max())
        for s, one in ones
    ]
    # a store written on 8 devices (2 examples, one after the other, each over the lanes)
    split = layersens.split(model, "relu2")
    x = model.example_inputs[:2]
    one = layersens.jacobian(split, x, max_memory="16MB")
    stored = layersens.stream_jacobian(split, x, f"{out_dir}/eight.zarr", devices=8, max_memory="16MB")
    report["store_error"] = float(np.abs(stored.load().matrix - one.matrix).max()) / float(np.abs(one.matrix).max())
    json.dump(report, open(f"{out_dir}/devices.json", "w"))


def process(process_id: int, port: int, store: str) -> None:
    import layersens

    layersens.join_processes(f"127.0.0.1:{port}", 2, process_id)
    import jax

    from layersens.examples import LENET_DIGITS

    stored = layersens.extract(LENET_DIGITS, "relu2", num_examples=2, out=store, max_memory="8MB")
    print(json.dumps({"process": jax.process_index(), "of": jax.process_count(), "complete": stored.complete}))


if __name__ == "__main__":
    if sys.argv[1] == "devices":
        devices(sys.argv[2])
    else:
        process(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
