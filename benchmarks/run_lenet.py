"""The LeNet-digits benchmark: every Jacobian method on relu1, relu2 and fc1 at 1 and 8 examples, on this machine.

    python benchmarks/run_lenet.py --overwrite      # (re)writes benchmarks/reports/lenet-cpu/
    python benchmarks/run_lenet.py --out DIR --repeats 5 --loop-budget 120 --method-budget 20 --run-limit 60

Runs on the shipped example model (no download), on JAX's default device. Expect about half an hour on a
2-core CPU: relu2 at 8 examples is a 1.2 GB Jacobian, and jax.jacrev and the reverse-mode methods take over a
minute per run there. See benchmarks/README.md for what the report contains.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from layersens.bench import run_benchmark
from layersens.examples import LENET_DIGITS

HERE = Path(__file__).resolve().parent
LAYERS = ("relu1", "relu2", "fc1")
NUM_EXAMPLES = (1, 8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "reports" / "lenet-cpu")
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--num-examples", default=",".join(map(str, NUM_EXAMPLES)))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--loop-budget",
        type=float,
        default=120.0,
        help="seconds one full run of the jitted scalar loop may take before it is extrapolated",
    )
    parser.add_argument(
        "--method-budget",
        type=float,
        default=20.0,
        help="seconds of timed runs per other method; slow methods get fewer than --repeats",
    )
    parser.add_argument(
        "--run-limit",
        type=float,
        default=60.0,
        help="seconds compiling and one run of a method may take (tried in its own process); "
        "slower methods are reported as skipped",
    )
    parser.add_argument("--methods", help="comma-separated subset (default: all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-method peak-memory processes")
    parser.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    args = parser.parse_args(argv)

    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {message}", file=sys.stderr, flush=True)

    report = run_benchmark(
        LENET_DIGITS,
        args.layers.split(","),
        num_examples=[int(n) for n in args.num_examples.split(",")],
        methods=args.methods,
        repeats=args.repeats,
        loop_budget_s=args.loop_budget,
        method_budget_s=args.method_budget,
        run_limit_s=args.run_limit,
        out_dir=args.out,
        overwrite=args.overwrite,
        measure_memory=not args.no_memory,
        progress=progress,
    )
    print(report.overview)
    for path in report.files:
        print(f"wrote {path}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
