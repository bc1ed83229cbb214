"""Kernels laid out ``(out, in)``: what colouring a leaf whose channel axis is its first gains.

    python benchmarks/run_channel_first.py --overwrite     # writes benchmarks/reports/channel-first-cpu/

On the zoo's two plain-JAX models with PyTorch-layout kernels (``zoo_models.mlp_out_in``: ``x @ W.T`` dense
layers; ``zoo_models.conv_oihw``: ``OIHW`` convolutions and an ``(out, in)`` readout), every layer at 1 and 8
examples: ``layersens.jacobian`` with the default ``Auto()``, the same with ``Auto(channel_first=False)`` (the plan
without colouring those leaves: what layersens computed before it found them), ``jax.jit(jax.vmap(jax.jacrev))``
and ``jax.jit(jax.vmap(jax.jacfwd))`` per leaf, ``jacrev`` concatenated into one matrix, and
``layersens.compressed_jacobian``. All are checked against each other first, then timed in interleaved rounds
whose order rotates (medians with their interquartile ranges; ranges that overlap are ties). About 5 minutes on a
2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

import layersens

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_zoo import as_matrix, baseline, every_layer, ms, quartiles, timed, write_report  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS = ("mlp_out_in", "conv_oihw")
BEFORE = layersens.Auto(channel_first=False)


def measure(split, x, rounds: int) -> dict:
    params = split.params
    calls, results, compile_seconds = {}, {}, {}
    baselines = (("jacrev", jax.jacrev, False), ("jacfwd", jax.jacfwd, False), ("jacrev_matrix", jax.jacrev, True))
    for name, ad, one in baselines:
        fn = baseline(split, ad, one)
        try:
            compile_seconds[name] = timed(lambda: jax.block_until_ready(fn(params, x)))  # noqa: B023
        except jax.errors.JaxRuntimeError as e:  # jacfwd of 85,002 parameters × 8 examples: 29 GB of tangents
            print(f"{split.layer} ×{len(x)}: {name} not run: {str(e).splitlines()[0][:80]}", file=sys.stderr)
            continue
        calls[name] = lambda fn=fn: jax.block_until_ready(fn(params, x))
        results[name] = np.asarray(fn(params, x)) if one else as_matrix(split, fn(params, x))
    for name, call in (
        ("layersens", lambda: layersens.jacobian(split, x)),
        ("before", lambda: layersens.jacobian(split, x, mode=BEFORE)),
    ):
        first = call()
        compile_seconds[name] = first.compile_seconds
        results[name] = first.matrix
        calls[name] = call
        if name == "layersens":
            mode, before_mode = first.mode, None
        else:
            before_mode = first.mode
    compressed = layersens.compressed_jacobian(split, x)
    compile_seconds["compressed"] = compressed.dense_part.compile_seconds
    results["compressed"] = compressed.to_dense().matrix
    calls["compressed"] = lambda: layersens.compressed_jacobian(split, x)
    reference = results["jacrev"]  # always runs: these layers are at most a few hundred outputs
    scale = float(np.max(np.abs(reference))) or 1.0
    for name, matrix in results.items():
        if not np.allclose(matrix, reference, rtol=1e-4, atol=1e-5 * scale):
            raise AssertionError(f"{split.layer}: {name} differs from jacrev by {np.max(np.abs(matrix - reference))}")
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            times[name].append(timed(calls[name]))
    return {
        "times": {name: quartiles(t) for name, t in times.items()},
        "compile_seconds": compile_seconds,
        "mode": mode,
        "before_mode": before_mode,
        "compressed_bytes": compressed.nbytes,
        "dense_bytes": int(reference.nbytes),
    }


def _ratio(row, a, b) -> str:
    if b not in row["times"]:
        return "n/a"
    ta, tb = row["times"][a], row["times"][b]
    tied = ta["q1"] <= tb["q3"] and tb["q1"] <= ta["q3"]
    return f"{tb['median'] / ta['median']:.3g}" + (" (tied)" if tied else "")


def markdown(report: dict) -> str:
    lines = [
        "# Kernels laid out (out, in): colouring a leaf whose channel axis is its first",
        "",
        f"{report['machine']}; jax {report['jax']}; {report['rounds']} interleaved rounds; times in ms, median "
        "(interquartile range). `before` is `Auto(channel_first=False)`: the same plan without colouring those "
        "leaves. Ratios are the other method's median over layersens' (above 1: layersens is faster); `(tied)` where "
        "the interquartile ranges overlap. `compressed` is `compressed_jacobian` (channel blocks instead of the "
        "dense matrix), ranked apart.",
        "",
        "| model | layer | n | M | P | layersens | before | jacrev | jacfwd | jacrev, one matrix | compressed | "
        "vs before | vs better per-leaf | layersens plan | before plan |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        t = row["times"]
        best = min((n for n in ("jacrev", "jacfwd") if n in t), key=lambda n: t[n]["median"])
        lines.append(
            f"| {row['model']} | {row['layer']} | {row['n']} | {row['M']} | {row['P']} | {ms(t['layersens'])} | "
            f"{ms(t['before'])} | {ms(t['jacrev'])} | {ms(t['jacfwd']) if 'jacfwd' in t else 'not run'} | "
            f"{ms(t['jacrev_matrix'])} | "
            f"{ms(t['compressed'])} | {_ratio(row, 'layersens', 'before')} | {_ratio(row, 'layersens', best)} | "
            f"{row['mode']} | {row['before_mode']} |"
        )
    if report["skipped"]:
        lines += ["", f"Skipped (dense result over {report['max_mib']:g} MiB): {', '.join(report['skipped'])}."]
    lines += ["", f"Run took {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "reports" / "channel-first-cpu")
    parser.add_argument("--num-examples", default="1,8")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--max-mib", type=float, default=128.0, help="skip layers whose dense result is larger")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        parser.error(f"{args.out} holds a report; pass --overwrite to replace it")
    rows, skipped, seconds = every_layer(
        MODELS,
        args.num_examples,
        args.max_mib,
        lambda split, x: measure(split, x, args.rounds),
        lambda row: f"vs before {_ratio(row, 'layersens', 'before')}, {row['mode']}",
    )
    report = {"rounds": args.rounds, "max_mib": args.max_mib, "seconds": seconds, "rows": rows, "skipped": skipped}
    write_report(args.out, report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
