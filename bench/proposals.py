"""Proposal quality: is the referent among a proposer's top-k boxes, and how fast is it?

    .venv/bin/python bench/proposals.py --data DIR [--split test] [--proposals auto gt]
        [-o top_k=50] [--limit N]

For each proposer, side by side: recall of the referent at IoU 0.5 and 0.75 among the top 10
and top 50 proposals (per expression, as Acc@0.5 counts), mean proposals per image and
images/s (detection only; images are decoded before timing). ``gt`` is the reference row: the
annotated boxes, which a grounding method on gt proposals chooses among. A method that
chooses among proposals can be right only where the referent is recalled.
Target (issue 14): recall@0.5 >= 98% at k = 50 on SynthRef test for ``auto``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rich.console import Console
from rich.table import Table

from refground.data import Dataset
from refground.evaluate.proposal_recall import proposer_recall
from refground.overrides import parse_assignments
from refground.vision.proposals import build_proposer

COLUMNS = ("recall@0.5@10", "recall@0.5@50", "recall@0.75@10", "recall@0.75@50")
TARGET_COLUMN, TARGET_RECALL = "recall@0.5@50", 98.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="REFER-format root")
    parser.add_argument("--dataset", default="synthref")
    parser.add_argument("--split-by", default="synth")
    parser.add_argument("--split", default="test")
    parser.add_argument("--proposals", nargs="+", default=["auto", "gt"])
    parser.add_argument("-o", dest="options", action="append", default=[],
                        help="KEY=VALUE option for every proposer (top_k=50, device=cpu)")
    parser.add_argument("--limit", type=int, default=None, help="first N expressions")
    args = parser.parse_args()

    samples = list(Dataset(args.data, args.dataset, args.split_by).split(args.split).samples)
    samples = samples[: args.limit]
    options = parse_assignments(args.options, "-o")
    table = Table(title=f"referent recall on {args.dataset} {args.split} ({len(samples)} "
                        "expressions)")
    for column in ("proposer", *COLUMNS, "proposals/image", "images/s"):
        table.add_column(column, justify="left" if column == "proposer" else "right")
    targets = []
    for name in args.proposals:
        result = proposer_recall(build_proposer(name, **dict(options)), samples)
        per_image = result["proposals_per_image"]
        table.add_row(name, *(f"{100 * result[c]:.1f}" for c in COLUMNS), f"{per_image:.1f}",
                      f"{result['images_per_s']:.1f}")
        if name != "gt":
            recall = 100 * result[TARGET_COLUMN]
            targets.append(f"{name}: {TARGET_COLUMN} {recall:.1f} >= {TARGET_RECALL:.0f} "
                           f"{'met' if recall >= TARGET_RECALL else 'NOT met'}")
    Console(width=140).print(table)
    for line in targets:
        print(f"target: {line}")


if __name__ == "__main__":
    main()
