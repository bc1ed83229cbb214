"""No regret: ``layersens.jacobian`` (``Auto``) against JAX's own ``jax.jit(jax.vmap(jax.jacrev))`` and
``jax.jit(jax.vmap(jax.jacfwd))`` of the same function, on every layer of a zoo of small real architectures.

    python benchmarks/run_zoo.py --overwrite          # (re)writes benchmarks/reports/zoo-cpu/
    python benchmarks/run_zoo.py --models vit,lstm --rounds 31 --out /tmp/zoo

The zoo (``zoo_models.py``): a ViT (patch embedding, attention block), a decoder block with causal attention and a
tied readout, a grouped/depthwise-conv CNN, an LSTM, and the shipped LeNet's layers up to ``--max-mib`` of dense
Jacobian. Each (layer, examples) pair: the three are compiled and run once (compile time kept apart), checked to
agree, then timed in interleaved rounds (one call of each per round, so a noisy moment slows all three alike; the
order rotates, so none always follows the same one).
The baselines are what a user would write: the flat function ``params -> ravel(split.apply(params, x))`` of the
same split, vmapped over examples, jitted, results waited for (``block_until_ready``); layersens returns a
``LayerJacobian`` on the host with the layer's values, its columns in the split's order. About 3 minutes on a
2-core CPU. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import layersens

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo_models import ZOO  # noqa: E402

HERE = Path(__file__).resolve().parent
NO_REGRET = 0.9  # the target: layersens at least this fraction of the better baseline's speed


def baseline(split, ad, one_matrix=False):
    """``jax.jit(jax.vmap(ad(f)))`` of the split's flat one-example function, over examples; with
    ``one_matrix``, its leaves concatenated into one ``(examples, M, P)`` matrix in the same program."""

    def flat(params, x):
        return jnp.ravel(split.apply(params, x))

    per_leaf = jax.vmap(ad(flat), in_axes=(None, 0))
    if not one_matrix:
        return jax.jit(per_leaf)

    def matrix(params, xs):
        leaves = per_leaf(params, xs)
        return jnp.concatenate([leaves[k].reshape(len(xs), split.num_outputs, -1) for k in split.param_names], 2)

    return jax.jit(matrix)


def as_matrix(split, leaves) -> np.ndarray:
    """A baseline's per-leaf Jacobians as ``(examples, M, P)`` in the split's column order."""
    n = next(iter(leaves.values())).shape[0]
    return np.concatenate([np.asarray(leaves[k]).reshape(n, split.num_outputs, -1) for k in split.param_names], 2)


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def quartiles(times):
    q = np.percentile(times, [25, 50, 75])
    return {"median": float(q[1]), "q1": float(q[0]), "q3": float(q[2])}


def measure(split, x, rounds: int) -> dict:
    params = split.params
    calls, compile_seconds, results = {}, {}, {}
    for name, ad, one in (
        ("jacrev", jax.jacrev, False),
        ("jacfwd", jax.jacfwd, False),
        ("jacrev_matrix", jax.jacrev, True),
    ):
        fn = baseline(split, ad, one)
        try:
            compile_seconds[name] = timed(lambda: jax.block_until_ready(fn(params, x)))  # noqa: B023
        except Exception as e:  # JAX cannot take this mode here (a custom_vjp, a while_loop)
            results[name] = f"not available: {type(e).__name__}"
            continue
        calls[name] = lambda fn=fn: jax.block_until_ready(fn(params, x))
        results[name] = np.asarray(fn(params, x)) if one else as_matrix(split, fn(params, x))
    estimates = {  # the cost model's estimates, to set against what was measured
        "plan": layersens.plan(split, x).cost,
        "jacrev": layersens.plan(split, x, layersens.Reverse()).cost,
        "jacfwd": layersens.plan(split, x, layersens.Forward()).cost,
    }
    first = layersens.jacobian(split, x)
    compile_seconds["layersens"] = first.compile_seconds
    calls["layersens"] = lambda: layersens.jacobian(split, x)
    scale = float(np.max(np.abs(first.matrix))) or 1.0
    for name, matrix in results.items():
        if isinstance(matrix, np.ndarray) and not np.allclose(first.matrix, matrix, rtol=1e-4, atol=1e-5 * scale):
            raise AssertionError(
                f"{split.layer}: layersens differs from {name} by {np.max(np.abs(first.matrix - matrix))}"
            )
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for r in range(rounds):
        # Rotated each round: the call right after a heavy one is slowed while XLA returns that one's memory
        # (README, "the first call after a heavy computation"), so no method may always follow the same one.
        for name in order[r % len(order) :] + order[: r % len(order)]:
            times[name].append(timed(calls[name]))
    row = {name: quartiles(t) for name, t in times.items()}
    best = min((n for n in row if n in ("jacrev", "jacfwd")), key=lambda n: row[n]["median"])
    ratio = row[best]["median"] / row["layersens"]["median"]
    # tied: the interquartile ranges overlap
    tied = row[best]["q1"] <= row["layersens"]["q3"] and row["layersens"]["q1"] <= row[best]["q3"]
    return {
        "times": row,
        "compile_seconds": compile_seconds,
        "estimates": estimates,
        "unavailable": {n: r for n, r in results.items() if isinstance(r, str)},
        "mode": first.mode,
        "trial": next((n for n in first.notes if n.startswith("timed trial")), None),
        "best_baseline": best,
        "ratio": ratio,
        "tied": tied,
    }


def ms(q) -> str:
    return f"{q['median'] * 1e3:.3g} ({q['q1'] * 1e3:.3g}–{q['q3'] * 1e3:.3g})"


def markdown(report: dict) -> str:
    rows = report["rows"]
    met = [r for r in rows if r["ratio"] >= NO_REGRET or r["tied"]]
    lines = [
        "# No regret: layersens against JAX's own Jacobians on a zoo of architectures",
        "",
        f"Machine: {report['machine']}; jax {report['jax']}; {report['rounds']} interleaved rounds per row; "
        f"run took {report['seconds']:.0f} s. Times in ms: median (interquartile range), warm (compile apart). "
        "`ratio` = the better baseline's median ÷ layersens's (≥ 1: layersens faster); `tied`: the interquartile "
        "ranges overlap, so the two are not ranked. The baselines return one array per leaf; layersens returns one "
        "`(examples, M, P)` matrix (with the layer's values), which costs a copy of the result: the last column "
        "times `jax.jacrev` with that concatenation in the same program, the like-for-like output.",
        "",
        f"**{len(met)} of {len(rows)} rows meet the target** (ratio ≥ {NO_REGRET} or tied); median ratio "
        f"{statistics.median(r['ratio'] for r in rows):.2f}; lowest {min(r['ratio'] for r in rows):.2f}.",
        "",
        "| model | layer | n | M | P | layersens | jacrev | jacfwd | ratio | computed by | jacrev, one matrix |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["times"]
        cell = {n: ms(t[n]) if n in t else "n/a" for n in ("layersens", "jacrev", "jacfwd", "jacrev_matrix")}
        verdict = f"{r['ratio']:.2f}" + (" (tied)" if r["tied"] and r["ratio"] < 1 else "")
        if r["ratio"] < NO_REGRET and not r["tied"]:
            verdict = f"**{verdict}**"
        mode = r["mode"] if len(r["mode"]) < 40 else r["mode"][:37] + "..."
        lines.append(
            f"| {r['model']} | {r['layer']} | {r['n']} | {r['M']} | {r['P']} | {cell['layersens']} | "
            f"{cell['jacrev']} | {cell['jacfwd']} | {verdict} | {mode} | {cell['jacrev_matrix']} |"
        )
    skipped = report["skipped"]
    if skipped:
        lines += ["", f"Skipped (dense Jacobian over {report['max_mib']} MiB): " + ", ".join(skipped) + "."]
    return "\n".join(lines) + "\n"


def every_layer(models, num_examples: str, max_mib: float, measure_row, summary) -> tuple[list, list, float]:
    """``measure_row(split, x)`` for every layer of the zoo's ``models`` at each count in ``num_examples`` ("1,8"),
    skipping dense results over ``max_mib``; each row is logged with ``summary(row)``. Returns the rows, what was
    skipped and the seconds taken."""
    start = time.perf_counter()
    rows, skipped = [], []
    for name in models:
        zoo = ZOO[name]
        model = zoo.build()
        for info in layersens.list_layers(model):
            split = layersens.split(model, info.name)
            for n in map(int, num_examples.split(",")):
                if n * split.num_outputs * split.num_params * 4 / 2**20 > max_mib:
                    skipped.append(f"{name}/{info.name} ×{n}")
                    continue
                row = measure_row(split, zoo.inputs(n))
                row.update(model=name, layer=info.name, n=n, M=split.num_outputs, P=split.num_params)
                rows.append(row)
                print(
                    f"[{time.perf_counter() - start:6.1f} s] {name:12s} {info.name:28s} ×{n}: {summary(row)}",
                    file=sys.stderr,
                    flush=True,
                )
    return rows, skipped, time.perf_counter() - start


def write_report(out: Path, report: dict, markdown) -> None:
    """``report.json`` and ``markdown(report)`` as ``report.md`` in ``out``, replaced whole (written beside it
    first), with the machine and JAX release added; prints the markdown."""
    report = {
        "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}, {jax.local_device_count()} device(s)",
        "jax": jax.__version__,
        **report,
    }
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "report.json").write_text(json.dumps(report, indent=1))
    (tmp / "report.md").write_text(markdown(report))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print((out / "report.md").read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "reports" / "zoo-cpu")
    # the report's five; the plain-JAX (out, in) models are run_channel_first.py's (--models takes them too)
    parser.add_argument("--models", default="vit,transformer,grouped_cnn,lstm,lenet")
    parser.add_argument("--num-examples", default="1,8")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--max-mib", type=float, default=64.0, help="skip layers whose dense result is larger")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        parser.error(f"{args.out} holds a report; pass --overwrite to replace it")
    rows, skipped, seconds = every_layer(
        args.models.split(","),
        args.num_examples,
        args.max_mib,
        lambda split, x: measure(split, x, args.rounds),
        lambda row: f"ratio {row['ratio']:.2f}{' (tied)' if row['tied'] else ''}  {row['mode'][:40]}",
    )
    report = {"rounds": args.rounds, "max_mib": args.max_mib, "seconds": seconds, "rows": rows, "skipped": skipped}
    write_report(args.out, report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
