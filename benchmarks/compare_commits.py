"""Two versions of layersens timed side by side on the shipped LeNet, interleaved, on this machine.

    python benchmarks/compare_commits.py 3e4b7d1                     # that commit against this working tree
    python benchmarks/compare_commits.py 3e4b7d1 --rounds 3 --repeats 15 --out benchmarks/reports/lenet-cpu/

A shared machine's speed drifts by more than the differences worth measuring (the same call measured 1.5× apart
an hour later here), so two benchmark reports made on different days cannot say whether a change made layersens
slower. This script can: the older commit is checked out into a temporary git worktree, and each round runs one
fresh process per version (their order alternating between rounds) that times ``layersens.jacobian(mode="auto")``
on every case (``_time_jacobian.py``). Both versions must compute the same Jacobian (fingerprints compared first);
the report gives, per case, each round's median and the ratio of the medians over all runs.

Writes ``compare-<commit>.md`` and ``.json`` into ``--out`` (``compare-<commit>-compressed`` with ``--form compressed``:
``compressed_jacobian`` instead, each case with its result's write floor).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "_time_jacobian.py"
CASES = ("relu1:1", "relu1:8", "relu2:1", "relu2:8", "fc1:1", "fc1:8")
RTOL = 1e-4


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def _run_side(root: Path, cases: str, mode: str, repeats: int, fingerprint: bool, form: str = "dense") -> dict:
    command = [sys.executable, str(WORKER), "--cases", cases, "--mode", mode, "--repeats", str(repeats)]
    command += ["--form", form]
    if fingerprint:
        command.append("--fingerprint")
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: timing {root} failed:\n{done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["imported_from"]).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"error: the process meant to time {root} imported layersens from {result['imported_from']}")
    return result


def _agree(a: list[float], b: list[float]) -> bool:
    # Against the norm: rounding differences of opposite signs change the sum and the projections by about the
    # norm of the difference, far below RTOL·norm, while any real difference moves the projections by its norm.
    scale = max(abs(a[1]), abs(b[1]), 1e-30)
    return all(abs(x - y) <= RTOL * scale for x, y in zip(a, b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the commit to compare against (anything git rev-parse accepts)")
    parser.add_argument("--cases", default=",".join(CASES), help="layer:examples, comma-separated")
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per case per process")
    parser.add_argument("--out", type=Path, default=HERE / "reports" / "lenet-cpu")
    parser.add_argument(
        "--form", choices=("dense", "compressed"), default="dense", help="time jacobian, or compressed_jacobian"
    )
    args = parser.parse_args(argv)

    old = _git("rev-parse", "--short", args.old)
    new = _git("rev-parse", "--short", "HEAD") + ("+changes" if _git("status", "--porcelain") else "")
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="layersens-compare-") as tmp:
        tree = Path(tmp) / "old"
        _git("worktree", "add", "--detach", str(tree), old)
        try:
            for r in range(args.rounds):
                for side in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    root = tree if side == "old" else ROOT
                    print(f"round {r + 1}/{args.rounds}: {side}", file=sys.stderr, flush=True)
                    runs[side].append(
                        _run_side(root, args.cases, args.mode, args.repeats, fingerprint=r == 0, form=args.form)
                    )
        finally:
            _git("worktree", "remove", "--force", str(tree))

    rows, data = [], []
    for case in args.cases.split(","):
        a, b = runs["old"][0]["cases"][case]["fingerprint"], runs["new"][0]["cases"][case]["fingerprint"]
        if not _agree(a, b):
            raise SystemExit(
                f"error: {case}: the two versions computed different Jacobians ({a} vs {b}); nothing to compare"
            )
        per_round = {s: [run["cases"][case]["median_seconds"] for run in runs[s]] for s in runs}
        pooled = {s: statistics.median(t for run in runs[s] for t in run["cases"][case]["seconds"]) for s in runs}
        ratio = pooled["old"] / pooled["new"]
        data.append(
            {
                "case": case,
                "round_medians_seconds": per_round,
                "pooled_median_seconds": pooled,
                "old_over_new": ratio,
                "fingerprints": {"old": a, "new": b},
            }
        )
        floor = statistics.median(run["cases"][case].get("write_floor_seconds", float("nan")) for run in runs["new"])
        nbytes = runs["new"][0]["cases"][case].get("result_bytes", 0)
        data[-1].update(write_floor_seconds=floor, result_bytes=nbytes)
        layer, n = case.split(":")
        rows.append(
            f"| {layer} ×{n} | {pooled['old'] * 1e3:.2f} ms | {pooled['new'] * 1e3:.2f} ms | {ratio:.2f}× | "
            + ", ".join(f"{o * 1e3:.2f} / {w * 1e3:.2f}" for o, w in zip(per_round["old"], per_round["new"]))
            + f" | {nbytes / 2**10:,.0f} KiB: {floor * 1e3:.3f} ms | {pooled['new'] / floor:.1f}× |"
        )
    load = os.getloadavg()
    call = "compressed_jacobian" if args.form == "compressed" else "jacobian"
    text = "\n".join(
        [
            f"# layersens {old} against {new}: `{call}(mode={args.mode!r})` on the shipped LeNet",
            "",
            (
                f"Created {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} by "
                f"`python benchmarks/compare_commits.py {args.old}`; {args.rounds} rounds, each one fresh process per "
                f"version (order alternating), {args.repeats} timed calls per case after a first call that compiles; "
                f"load average at the end {tuple(round(x, 2) for x in load)}. Both versions' results agreed (sum, "
                "norm and two random projections) before timing was compared. The write floor is the median time to "
                "write the result's bytes into fresh memory (`np.empty(n, np.uint8).fill(1)`), in the new version's "
                "processes."
            ),
            "",
            "| case | old (median of all calls) | new | old ÷ new (> 1: new is faster) "
            "| per-round medians, old / new | result: write floor | new ÷ floor |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"compare-{old}" + ("-compressed" if args.form == "compressed" else "")
    md, js = args.out / f"{stem}.md", args.out / f"{stem}.json"
    md.write_text(text)
    js.write_text(
        json.dumps(
            {
                "old": old,
                "new": new,
                "mode": args.mode,
                "form": args.form,
                "rounds": args.rounds,
                "repeats": args.repeats,
                "cases": data,
                "runs": runs,
            },
            indent=1,
        )
    )
    print(text)
    print(f"wrote {md}\nwrote {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
