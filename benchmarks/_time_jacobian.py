"""One side of ``compare_commits.py``: times ``layersens.jacobian`` on the shipped LeNet with whatever layersens is
importable, and prints one JSON line (``--form compressed``: ``compressed_jacobian``, fingerprinted through its
lossless ``to_dense()``; with each case the result's bytes and the time to write that many bytes into fresh memory,
its floor).

It uses only the API every version since the first benchmark report has had (``load_model``, ``split``,
``jacobian(..., mode=...)``, ``.matrix``, ``layersens.examples.LENET_DIGITS``), so the same file times an older
checkout. Besides the times it prints fingerprints of each result (its sum, its norm and two fixed random
projections, in float64) so the caller can check that both sides computed the same Jacobian before comparing them.
Calls are timed by the benchmark's own helper (``layersens/bench/_timing.py``), loaded from this checkout by path:
the older side may not have it, and both sides are timed the same way.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
from pathlib import Path

import numpy as np

import layersens
from layersens.examples import LENET_DIGITS


def _load_timing():
    path = Path(__file__).resolve().parent.parent / "layersens" / "bench" / "_timing.py"
    spec = importlib.util.spec_from_file_location("_layersens_bench_timing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_timing = _load_timing()


def fingerprint(matrix: np.ndarray) -> list[float]:
    """Sum, Frobenius norm and two projections on fixed random vectors, one example at a time in float64."""
    n = matrix.shape[0]
    flat = matrix.reshape(n, -1)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2, flat.shape[1]))
    total, squares, projections = 0.0, 0.0, np.zeros(2)
    for row in flat:
        row = row.astype(np.float64)
        total += float(row.sum())
        squares += float(row @ row)
        projections += vectors @ row
    return [total, squares**0.5, *map(float, projections)]


def _write(nbytes: int) -> None:
    np.empty(nbytes, np.uint8).fill(1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", required=True, help="comma-separated layer:examples, e.g. relu1:1,fc1:8")
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--fingerprint", action="store_true")
    parser.add_argument(
        "--form", choices=("dense", "compressed"), default="dense", help="jacobian, or compressed_jacobian"
    )
    args = parser.parse_args(argv)

    model = layersens.load_model(LENET_DIGITS)
    out = {"version": getattr(layersens, "__version__", "?"), "imported_from": layersens.__file__, "cases": {}}
    for case in args.cases.split(","):
        layer, n = case.split(":")
        split = layersens.split(model, layer)
        x = np.asarray(model.example_inputs[: int(n)])
        compute = layersens.compressed_jacobian if args.form == "compressed" else layersens.jacobian
        call = functools.partial(compute, split, x, mode=args.mode)
        result, first = _timing.timed(call)
        dense = result.to_dense() if args.form == "compressed" else result
        prints = fingerprint(dense.matrix) if args.fingerprint else None
        nbytes = int(result.nbytes)
        del result, dense
        times = _timing.time_calls(call, args.repeats)
        out["cases"][case] = {
            "first_call_seconds": first,
            "median_seconds": statistics.median(times),
            "seconds": times,
            "fingerprint": prints,
            "result_bytes": nbytes,
            # the floor: writing the result's bytes into fresh memory, as a new result must be
            "write_floor_seconds": statistics.median(
                _timing.time_calls(functools.partial(_write, nbytes), args.repeats)
            ),
        }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
