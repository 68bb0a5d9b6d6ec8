"""Every method under two drawings of one SynthRef: how much survives a change of rendering?

    .venv/bin/python bench/robustness.py --data data/synth data/synth-shifted \\
        [--split test] [--out runs/robustness] [--limit N] [--rows graph-resolve,erpa ...]

``--data`` takes SynthRef roots of one seed drawn differently (``refground synth --rendering
standard|shifted``); each root's rendering is read back from its ``instances.json`` (a root
whose rendering cannot be told is refused before any model loads). Every row of :data:`ROWS`
(a method, its options and its proposals: ``gt`` = the annotated boxes, ``auto`` = the shipped
detector) is evaluated on ``--split`` of each root exactly as ``refground eval --data D
--method M -o ... --proposals P --split S`` evaluates it, and the table prints Acc@0.5 (%) side
by side with the drop. With ``--out`` each cell's ``predictions.jsonl`` and ``metrics.json``
land in ``OUT/<rendering>/<row>/`` and an interrupted run resumes there (``bench/size_words.py``
reads those directories).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refground.data.synth import synthref_dataset
from refground.data.synth.writer import dataset_rendering
from refground.errors import ConfigError
from refground.evaluate.runner import evaluate
from refground.methods import build_method


@dataclass(frozen=True)
class Row:
    """One line of the table: a method as `refground eval` builds it."""

    label: str
    method: str
    options: dict[str, object] = field(default_factory=dict)


ROWS: tuple[Row, ...] = (
    Row("center", "center"),  # the gt box nearest the image centre: reads no text
    Row("crop-rank", "crop-rank", {"proposals": "gt"}),
    Row("crop-rank + detector", "crop-rank", {"proposals": "auto"}),
    Row("visual-prompt", "visual-prompt", {"proposals": "gt"}),
    Row("visual-prompt + detector", "visual-prompt", {"proposals": "auto"}),
    Row("graph-resolve", "graph-resolve", {"proposals": "gt"}),
    Row("graph-resolve + detector", "graph-resolve", {"proposals": "auto"}),
    Row("erpa (synthref-erpa)", "erpa", {"checkpoint": "synthref-erpa", "proposals": "gt"}),
    Row("erpa (synthref-erpa) + detector", "erpa",
        {"checkpoint": "synthref-erpa", "proposals": "auto"}),
    Row("erpa (synthref-erpa-report)", "erpa", {"checkpoint": "synthref-erpa-report"}),
    Row("regressor (synthref-regressor)", "regressor", {"checkpoint": "synthref-regressor"}),
    Row("detr (synthref-detr)", "detr", {"checkpoint": "synthref-detr"}),
)


def slug(label: str) -> str:
    """``graph-resolve + detector`` -> ``graph-resolve-detector``: a row's directory name."""
    return re.sub(r"[^0-9A-Za-z]+", "-", label).strip("-")


def evaluate_row(row: Row, root: Path, split: str, limit: int | None,
                 out: Path | None) -> dict[str, float]:
    dataset = synthref_dataset(root)
    samples = list(dataset.split(split, limit=limit))
    method = build_method(row.method, **row.options)
    method.prepare(dataset)
    run_info = {"method": row.method, "options": row.options, "split": split,
                "proposals": method.proposer_name}
    result = evaluate(method, samples, out, resume=out is not None, progress=False,
                      run_info=run_info)
    return {"n": len(samples), **{k: result.metrics[k] for k in ("acc@0.5", "miou")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rows", default=None,
                        help="comma-separated row labels (default: all)")
    args = parser.parse_args()
    try:
        renderings = [dataset_rendering(root) for root in args.data]
    except ConfigError as error:
        parser.exit(2, f"robustness: {error}\n")
    wanted = None if args.rows is None else set(args.rows.split(","))
    unknown = sorted((wanted or set()) - {r.label for r in ROWS})
    if unknown:
        parser.exit(2, f"robustness: unknown rows {unknown}; rows: "
                       f"{', '.join(r.label for r in ROWS)}\n")
    rows = [r for r in ROWS if wanted is None or r.label in wanted]

    results: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        for root, rendering in zip(args.data, renderings, strict=True):
            out = None if args.out is None else args.out / rendering / slug(row.label)
            cell = evaluate_row(row, root, args.split, args.limit, out)
            results.setdefault(row.label, {})[rendering] = cell
            print(f"{row.label} on {rendering} {args.split}: Acc@0.5 "
                  f"{100 * cell['acc@0.5']:.1f} ({cell['n']} expressions)", flush=True)

    print(f"\nAcc@0.5 (%) on {args.split}, " + " vs ".join(
        f"{r} ({root})" for r, root in zip(renderings, args.data, strict=True)))
    header = "| method | " + " | ".join(renderings) + (
        " | drop |" if len(renderings) == 2 else " |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for label, cells in results.items():
        values = [100 * cells[r]["acc@0.5"] for r in renderings]
        drop = f" | {values[0] - values[1]:+.1f}" if len(values) == 2 else ""
        print(f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + drop + " |")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"table-{args.split}.json").write_text(
            json.dumps({"split": args.split, "data": [str(d) for d in args.data],
                        "renderings": renderings, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
