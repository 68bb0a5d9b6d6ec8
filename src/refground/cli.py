"""The ``refground`` command. Each sub-command is a thin layer over a library function."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from refground.defaults import DEFAULT_METHOD
from refground.errors import ConfigError, RefgroundError
from refground.overrides import parse_assignments

if TYPE_CHECKING:
    from refground.train.config import TrainConfig
    from refground.types import Prediction

#: The proposers the help texts name. Help is built when this module is imported, and listing
#: the registry would import torch for every `refground --help`; tests/test_cli.py checks this
#: against ``PROPOSERS.names()``, so a new proposer cannot be left out.
PROPOSER_NAMES = ("gt", "auto", "centernet", "owlvit", "owlv2", "grounding-dino", "detr", "yolo")

#: ``--format`` of the commands that read a dataset (:class:`refground.data.Dataset`).
DataFormatOption = Annotated[str, typer.Option(
    "--format", help="Dataset file format: a module of refground/data/formats (refer: "
                     "RefCOCO/+/g and SynthRef).")]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Visual grounding of referring expressions: generate data, evaluate, inspect.",
)
console = Console()
err_console = Console(stderr=True)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Output root (REFER layout is written under it).")],
    seed: Annotated[int, typer.Option(help="Random seed; same seed -> identical files.")] = 0,
    images: Annotated[int, typer.Option(help="Number of images to generate.")] = 2000,
    scale: Annotated[str | None, typer.Option(
        help="Object sizes relative to the image: 'refcoco' (referents as large as "
             "RefCOCOg's) or 'small' (the original layout). Default: "
             "refground.data.synth.DEFAULT_SCALE.")] = None,
    phrasing: Annotated[str, typer.Option(
        help="'standard' (the generator's templates) or 'varied': the same images, referents "
             "and logical forms in other wordings (relative clauses, 'of the Xs, the one "
             "...', 'right-most', commands), to measure how much a method leans on the "
             "grammar.")] = "standard",
    rendering: Annotated[str, typer.Option(
        help="How scenes are drawn: 'standard' (SynthRef 1.0's drawing, the default), "
             "'shifted' (a test drawing with rotations, other proportions, outlines, shades, "
             "backgrounds, blur and JPEG that standard never uses) or 'randomised' (the wide "
             "training distribution for domain randomisation). Same splits and layouts for "
             "every rendering of a seed.")] = "standard",
    train_drawings: Annotated[int, typer.Option(
        help="With a non-standard rendering: draw every train scene this many times (new "
             "looks and background each time), the extra drawings as further train images; "
             "other splits are unchanged.")] = 1,
) -> None:
    """Generate SynthRef, an offline benchmark in the RefCOCO (REFER) file layout."""
    from refground.data.synth import generate_synthref

    start = time.perf_counter()
    stats = generate_synthref(out, seed=seed, num_images=images, scale=scale,
                              phrasing=phrasing, rendering=rendering,
                              train_drawings=train_drawings)
    elapsed = time.perf_counter() - start
    console.print(f"wrote SynthRef ({images} images, seed {seed}, scale {stats.scale}, "
                  f"{phrasing} phrasing, {rendering} rendering) to {out} "
                  f"in {elapsed:.1f} s")
    console.print_json(json.dumps(stats.to_dict()))


@app.command("methods")
def list_methods() -> None:
    """List the registered grounding methods, each with what it does."""
    from refground.methods import METHODS, trainable_methods

    width = max(len(name) for name in METHODS.names())
    trainable = set(trainable_methods())
    for name in METHODS.names():
        summary = getattr(METHODS.get(name), "summary", "")
        mark = " [trainable: refground train]" if name in trainable else ""
        typer.echo(f"{name:<{width}}  {summary}{mark}".rstrip())


@app.command("parse")
def parse_command(
    text: Annotated[str, typer.Argument(help="The referring expression (quote it).")],
    backend: Annotated[str, typer.Option(
        help="auto (spaCy when installed, else rules), spacy or rules.")] = "auto",
) -> None:
    """Parse a referring expression into a scene graph and print it as JSON."""
    from refground.language import get_parser

    graph = get_parser(backend).parse(text)
    typer.echo(json.dumps(graph.to_dict(), indent=2))


@app.command("prepare-graphs")
def prepare_graphs_command(
    data: Annotated[Path, typer.Option(help="Data root holding <dataset>/refs(<split-by>).p.")],
    dataset: Annotated[str, typer.Option(help="refcoco, refcoco+, refcocog or synthref.")] = (
        "synthref"),
    split_by: Annotated[str, typer.Option(help="umd, unc, google or synth.")] = "synth",
    data_format: DataFormatOption = "refer",
    backend: Annotated[str, typer.Option(
        help="auto (spaCy when installed, else rules), spacy or rules.")] = "auto",
    processes: Annotated[int, typer.Option(help="Parser worker processes.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Expressions per parser batch.")] = 256,
) -> None:
    """Parse every expression of a dataset (all splits) once; cache the graphs next to its
    annotations as <data>/<dataset>/graphs.<backend>.jsonl."""
    from refground.data import Dataset
    from refground.language.prepare import prepare_graph_cache

    result = prepare_graph_cache(Dataset(data, dataset, split_by, format=data_format), backend,
                                 processes, batch_size)
    refused = f"; {result.refused} over-long left out" if result.refused else ""
    console.print(f"parsed {result.distinct} distinct expressions ({result.expressions} "
                  f"sentences) with the {result.backend} parser in {result.seconds:.1f} s "
                  f"({result.per_second:.0f} sentences/s){refused}")
    console.print(f"wrote {result.path}")


@app.command("eval")
def eval_command(
    data: Annotated[Path, typer.Option(help="Data root holding <dataset>/refs(<split-by>).p.")],
    method: Annotated[str, typer.Option(help="Registered method name (see `refground methods`).")],
    dataset: Annotated[str, typer.Option(help="refcoco, refcoco+, refcocog or synthref.")] = (
        "synthref"),
    split_by: Annotated[str, typer.Option(help="umd, unc, google or synth.")] = "synth",
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    images: Annotated[Path | None, typer.Option(help="Image directory [<data>/images].")] = None,
    data_format: DataFormatOption = "refer",
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N samples.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write metrics.json + predictions.jsonl.")] = (
        None),
    batch_size: Annotated[int, typer.Option(help="Samples per method call.")] = 16,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    skip_invalid: Annotated[bool, typer.Option(help="Skip and count malformed records.")] = False,
    proposals: Annotated[str | None, typer.Option(
        help="Proposer for proposal-based methods: gt (the annotated boxes), auto (the "
             "default detector, the shipped synthref-det), "
             f"{', '.join(PROPOSER_NAMES[2:])}; same as -o proposals=NAME.")] = None,
    option: Annotated[list[str], typer.Option(
        "--option", "-o", help="Method option key=value (repeatable).")] = [],  # noqa: B006
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Evaluate a method on one split; print Acc@0.5/0.75/0.9, mIoU and breakdowns."""
    from refground.data import Dataset
    from refground.evaluate.runner import evaluate
    from refground.evaluate.table import (
        BREAKDOWNS,
        breakdown_table,
        comparison_table,
        graph_use_line,
    )
    from refground.methods import build_method

    if resume and out is None:
        raise ConfigError("--resume needs --out (the run directory to continue)")
    source = Dataset(data, dataset, split_by, images, data_format)
    split_data = source.split(split, skip_invalid=skip_invalid, limit=limit)
    if split_data.skipped:
        err_console.print(f"[yellow]skipped {len(split_data.skipped)} invalid records; "
                          f"first: {split_data.skipped[0]}[/yellow]")
    samples = split_data.samples
    options = parse_assignments(option, "-o")
    if proposals is not None:
        options["proposals"] = proposals
    run_method = build_method(method, **options)
    run_method.prepare(source)
    run_info = {"method": method, "options": options, "proposals": run_method.proposer_name,
                "dataset": dataset, "split_by": split_by, "split": split,
                "data": str(Path(data).resolve()),
                "images": str(Path(images if images is not None else data / "images").resolve()),
                "skipped_invalid": len(split_data.skipped)}
    result = evaluate(run_method, samples, out, batch_size, resume, progress, run_info)
    title = f"{dataset}({split_by}) {split}"
    console.print(comparison_table({method: result.metrics}, title=title))
    for key, name in BREAKDOWNS:
        if result.metrics[key]:
            console.print(breakdown_table(result.metrics, key, f"{method}: by {name}"))
    if "dropped_relations" in result.metrics:
        console.print(graph_use_line(method, result.metrics))
    if out is not None:
        console.print(f"wrote {out / 'metrics.json'} and {out / 'predictions.jsonl'}")


@app.command("pretrain-clip")
def pretrain_clip_command(
    data: Annotated[Path, typer.Option(help="SynthRef root (from `refground synth`).")] = Path(
        "data/synth"),
    out: Annotated[Path, typer.Option(help="Directory to save the trained CLIP in.")] = Path(
        "runs/synthref-clip"),
    steps: Annotated[int | None, typer.Option(
        help="Optimisation steps [the shipped recipe's].")] = None,
    images_per_step: Annotated[int | None, typer.Option(
        help="Train images per step [the shipped recipe's].")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed [the shipped recipe's].")] = None,
    eval_every: Annotated[int | None, typer.Option(
        help="Validate every N steps [the shipped recipe's].")] = None,
    export_dtype: Annotated[str | None, typer.Option(
        help="Weights' dtype when saved: float16 (as shipped) or float32.")] = None,
    override: Annotated[list[str], typer.Option(
        "--set", help="Any other PretrainConfig field: name=value (repeatable).")] = [],  # noqa: B006
) -> None:
    """Train a small CLIP on SynthRef's train split (crops, attribute labels, marked views).

    With no flags this is the shipped synthref-clip's recipe (``PretrainConfig``'s defaults),
    including the float16 export; the record of the run is OUT/training.json."""
    from dataclasses import replace

    from refground.train.pretrain_clip import PretrainConfig, config_override, pretrain_clip

    given = {"steps": steps, "images_per_step": images_per_step, "seed": seed,
             "eval_every": eval_every, "export_dtype": export_dtype}
    fields = dict(config_override(pair) for pair in override)
    fields.update({k: v for k, v in given.items() if v is not None})
    config = replace(PretrainConfig(), **fields)
    summary = pretrain_clip(data, out, config, log=console.print)
    console.print(f"saved to {out} after {summary['seconds']} s")


def _load_train_config(config: Path, overrides: list[str]) -> TrainConfig:
    from refground.train.config import load_config

    return load_config(config, parse_assignments(overrides, "--set"))


@app.command()
def train(
    config: Annotated[Path, typer.Option(help="Training YAML (see configs/).")],
    resume: Annotated[bool, typer.Option(
        help="Continue the run in the config's out directory from checkpoints/last.")] = False,
    override: Annotated[list[str], typer.Option(
        "--set", help="Override a config value: section.key=value (repeatable).")] = [],  # noqa: B006
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a trainable method (`refground methods` marks them); multi-process with
    `accelerate launch`."""
    from refground.evaluate.table import comparison_table
    from refground.train.trainer import Trainer

    train_config = _load_train_config(config, override)
    trainer = Trainer(train_config, progress=progress, log=console.print)
    summary = trainer.fit(resume=resume)
    if trainer.accelerator.is_main_process and summary.last_metrics is not None:
        console.print(comparison_table({train_config.method: summary.last_metrics},
                                       title=f"{train_config.data.val_split} after "
                                             f"{summary.steps} steps"))
        console.print(f"best val {summary.best_metric:.4f} at step {summary.best_step}; "
                      f"{summary.train_samples_per_second} samples/s on {summary.processes} "
                      f"process(es); {summary.bad_steps} skipped steps; checkpoints in "
                      f"{train_config.out / 'checkpoints'} (evaluate with -o checkpoint=...)")


@app.command("cache-features")
def cache_features_command(
    config: Annotated[Path, typer.Option(help="Training YAML (see configs/).")],
    split: Annotated[list[str], typer.Option(
        help="Another split to cache besides the config's train and val (repeatable).")] = [],  # noqa: B006
    override: Annotated[list[str], typer.Option(
        "--set", help="Override a config value: section.key=value (repeatable).")] = [],  # noqa: B006
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Compute a training config's frozen features once (beside the dataset); `train` reads
    them instead of images, and builds them itself when they are missing."""
    from rich.table import Table

    from refground.train.cache import build_cache

    tables = build_cache(_load_train_config(config, override), split, log=console.print,
                         progress=progress)
    if not tables:
        console.print("this method's configuration caches nothing (a fine-tuned backbone or a "
                      "detector proposer); training reads images")
        return
    table = Table("group", "rows", "MB", "file")
    for name, features in tables.items():
        table.add_row(name, str(len(features.keys)),
                      f"{features.path.stat().st_size / 2**20:.1f}", str(features.path))
    console.print(table)


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Option(help="A `refground train` output directory.")],
    out: Annotated[Path, typer.Option(help="Directory of the exported model.")],
    data: Annotated[str, typer.Option(help="The data recipe (commands that made the data).")],
    command: Annotated[str, typer.Option(help="The exact training command.")],
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    dtype: Annotated[str, typer.Option(help="Weights' dtype: float16 (as shipped) or "
                                            "float32.")] = "float16",
    evaluation: Annotated[list[str], typer.Option(
        "--eval", help="SPLIT=DIR of a `refground eval` run of the export (repeatable).")] = [],  # noqa: B006
    what: Annotated[str | None, typer.Option(help="One line saying what the model is.")] = None,
) -> None:
    """Export a run's checkpoint as a shippable model: method files in float16 and a
    training.json with the data recipe, command, config, wall time, curve and test metrics."""
    from refground.train.export import export_run

    pairs = {}
    for item in evaluation:
        split, sep, directory = item.partition("=")
        if not sep:
            raise ConfigError(f"--eval takes SPLIT=DIR, got {item!r}")
        pairs[split] = Path(directory)
    record = export_run(run, out, checkpoint=checkpoint, dtype=dtype, data_recipe=data,
                        command=command, evaluations=pairs, what=what)
    console.print(f"exported {record['config']['method']} to {out} "
                  f"({record['size_bytes'] / 2**20:.1f} MB)")


@app.command("train-detector")
def train_detector(
    config: Annotated[Path, typer.Option(help="Detector YAML (configs/synthref-det.yaml).")],
    resume: Annotated[bool, typer.Option(
        help="Continue the run in the config's out directory from checkpoints/last.")] = False,
    override: Annotated[list[str], typer.Option(
        "--set", help="Override a config value: section.key=value (repeatable).")] = [],  # noqa: B006
) -> None:
    """Train the class-agnostic CenterNet detector (the `centernet` / `auto` proposer)."""
    from refground.train.detector import DetectorTrainer, load_detector_config

    detector_config = load_detector_config(config, parse_assignments(override, "--set"))
    summary = DetectorTrainer(detector_config, log=console.print).fit(resume=resume)
    console.print(f"best val recall@0.5 top-50 {summary['best_metric']:.4f} after "
                  f"{summary['epochs_completed']} epochs ({summary['seconds']:.0f} s); "
                  f"export with refground export-detector --run {detector_config.out}")


@app.command("export-detector")
def export_detector_command(
    run: Annotated[Path, typer.Option(help="A `refground train-detector` output directory.")],
    out: Annotated[Path, typer.Option(help="Directory of the exported detector.")],
    data: Annotated[str, typer.Option(help="The data recipe (commands that made the data).")],
    command: Annotated[str, typer.Option(help="The exact training command.")],
    split: Annotated[list[str], typer.Option(
        help="Measure referent recall of the export on this split of the run's dataset "
             "(repeatable).")] = [],  # noqa: B006
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
) -> None:
    """Export a detector run's best checkpoint in float16 with its training.json (and the
    export's recall on the given splits)."""
    from refground.train.detector import export_detector

    record = export_detector(run, out, data_recipe=data, command=command, splits=split,
                             checkpoint=checkpoint)
    console.print(f"exported the detector to {out} ({record['size_bytes'] / 2**20:.1f} MB)")
    for name, recall in record.get("test", {}).items():
        console.print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in recall.items()
                                               if k.startswith("recall")))


@app.command()
def tune(
    config: Annotated[Path, typer.Option(help="Training YAML with a tune: section.")],
    trials: Annotated[int | None, typer.Option(help="Total trials [tune.trials].")] = None,
    override: Annotated[list[str], typer.Option(
        "--set", help="Override a config value: section.key=value (repeatable).")] = [],  # noqa: B006
) -> None:
    """Search hyperparameters with Optuna (SQLite study, resumable, median pruning)."""
    from refground.train.tune import tune as run_tune

    result = run_tune(_load_train_config(config, override), trials, log=console.print)
    console.print(f"best {result.best_value:.4f} with {json.dumps(result.best_params)}"
                  + (f" (starting config: {result.baseline_value:.4f})"
                     if result.baseline_value is not None else ""))
    console.print(f"best config written to {result.best_config}; study in {result.storage}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes data and results.")] = Path(
        "runs/demo"),
    images: Annotated[int, typer.Option(help="SynthRef images to generate.")] = 200,
    seed: Annotated[int, typer.Option(
        help="SynthRef seed (the shipped CLIP was trained on seed 0's train split).")] = 7,
) -> None:
    """Offline end-to-end run: generate a small SynthRef, evaluate the built-in methods with the
    shipped SynthRef CLIP (and shipped trained model), ground a few expressions and draw them."""
    from rich.table import Table

    from refground.demo import EXAMPLE_METHOD, run_demo
    from refground.evaluate.table import breakdown_table, comparison_table

    console.print(f"generating SynthRef ({images} images, seed {seed}) in {out} and evaluating "
                  "the built-in methods ...")
    result = run_demo(out, images=images, seed=seed)
    console.print(comparison_table(result.metrics,
                                   title=f"SynthRef test ({result.expressions} expressions)"))
    for name in ("crop-rank", "graph-resolve"):
        console.print(breakdown_table(result.metrics[name], "by_type",
                                      f"{name}: by expression type"))
    table = Table(title=f"{EXAMPLE_METHOD} on one test image (Python API, boxes = annotations)")
    for column in ("expression", "type", "IoU", "picture"):
        table.add_column(column)
    for example in result.examples:
        table.add_row(example.expression, example.expression_type or "-", f"{example.iou:.2f}",
                      str(example.picture))
    console.print(table)
    console.print(f"predictions and metrics per method are in {out}/<method>/")


# --- using it: predict one image, pictures of runs ------------------------------------------

def _parse_boxes(boxes: str | None, boxes_file: Path | None) -> list[object] | None:
    """Candidate boxes from ``--boxes`` (JSON) or ``--boxes-file`` (a JSON list of boxes, or an
    object with a ``boxes`` list); checked against the image later, by the Grounder."""
    from refground.errors import InputError

    if boxes is not None and boxes_file is not None:
        raise ConfigError("give --boxes or --boxes-file, not both")
    if boxes is None and boxes_file is None:
        return None
    source = "--boxes"
    raw = boxes
    if boxes_file is not None:
        source = str(boxes_file)
        if not boxes_file.is_file():
            raise InputError(f"boxes file not found: {boxes_file}")
        raw = boxes_file.read_text(encoding="utf-8")
    try:
        value = json.loads(raw or "")
    except json.JSONDecodeError as exc:
        raise InputError(f"{source} is not JSON ({exc.msg}); give a list of boxes such as "
                         "'[[10, 20, 110, 220], [300, 40, 420, 340]]'") from None
    if isinstance(value, dict) and "boxes" in value:
        value = value["boxes"]
    if not isinstance(value, list):
        raise InputError(f"{source} must hold a JSON list of [x0, y0, x1, y1] boxes")
    return value


def _prediction_json(prediction: Prediction, method: str, image: Path, text: str) -> dict:
    """What `refground predict` prints: the prediction with the inputs that produced it."""
    return {
        "image": str(image), "text": text, "method": method,
        "box": list(prediction.box), "score": prediction.score,
        "fallback": prediction.fallback,
        "candidates": [{"box": list(c.box), "score": c.score, "label": c.label}
                       for c in prediction.candidates],
    }


@app.command()
def predict(
    image: Annotated[Path, typer.Option(help="The image file.")],
    text: Annotated[str, typer.Option(help="The referring expression (quote it).")],
    method: Annotated[str, typer.Option(
        help="Registered method name (see `refground methods`).")] = DEFAULT_METHOD,
    proposals: Annotated[str | None, typer.Option(
        help=f"Proposer for proposal-based methods ({', '.join(PROPOSER_NAMES[1:])}); same as "
             "-o proposals=NAME. Without it, given --boxes are the candidates, else the "
             "default detector's.")] = None,
    option: Annotated[list[str], typer.Option(
        "--option", "-o", help="Method option key=value (repeatable).")] = [],  # noqa: B006
    boxes: Annotated[str | None, typer.Option(
        help="Candidate boxes as JSON, xyxy pixels: '[[x0,y0,x1,y1], ...]'; without them "
             "the default detector (auto: the shipped synthref-det) finds them.")] = None,
    boxes_file: Annotated[Path | None, typer.Option(
        help="A JSON file holding the candidate boxes (a list, or {\"boxes\": [...]}).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Also draw the prediction and write it as a PNG here.")] = None,
    runner_ups: Annotated[int, typer.Option(help="Next-best candidates drawn faded.")] = 3,
) -> None:
    """Ground one expression in one image; print the prediction as JSON (box, score,
    candidates, fallback) and, with --out, write a picture of it."""
    from refground.api import Grounder, check_text
    from refground.images import load_image
    from refground.types import ImageSource

    expression = check_text(text)
    candidate_boxes = _parse_boxes(boxes, boxes_file)
    # decoded once, before the model loads: a missing or unreadable image fails fast
    picture = ImageSource.file(image, load_image(image))
    options = parse_assignments(option, "-o")
    if proposals is not None:
        options["proposals"] = proposals
    prediction = Grounder.load(method, **options).ground(picture, expression, candidate_boxes)
    typer.echo(json.dumps(_prediction_json(prediction, method, image, expression), indent=2))
    if out is not None:
        from refground.viz.draw import draw_prediction

        out.parent.mkdir(parents=True, exist_ok=True)
        draw_prediction(picture, prediction, expression, runner_ups).save(out)
        err_console.print(f"wrote {out}", soft_wrap=True)


def _run_info(predictions: Path) -> dict:
    """The ``run`` block of the metrics.json next to a predictions file, if there is one."""
    from refground.evaluate.runner import METRICS_FILE

    try:
        run = json.loads((predictions.parent / METRICS_FILE).read_text(encoding="utf-8"))["run"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return run if isinstance(run, dict) else {}


@app.command()
def viz(
    predictions: Annotated[Path, typer.Option(help="A run's predictions.jsonl.")],
    out: Annotated[Path, typer.Option(help="Directory for the sheet-NNN.png contact sheets.")],
    data: Annotated[Path | None, typer.Option(
        help="Data root: take images from this dataset split (joined on sample_id) instead of "
             "the paths in the records.")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="With --data [the run's, from metrics.json; else synthref].")] = None,
    split_by: Annotated[str | None, typer.Option(
        help="With --data [the run's; else synth].")] = None,
    split: Annotated[str | None, typer.Option(help="With --data [the run's; else test].")] = None,
    images: Annotated[Path | None, typer.Option(
        help="With --data: image directory [<data>/images].")] = None,
    per_page: Annotated[int, typer.Option(help="Images per sheet.")] = 12,
    worst_first: Annotated[bool, typer.Option(
        "--worst-first/--best-first", help="Lowest IoU first, or highest.")] = True,
    limit: Annotated[int | None, typer.Option(
        help="Draw only the first N after sorting.")] = None,
    tile_size: Annotated[int, typer.Option(help="Longest side of each image, pixels.")] = 320,
) -> None:
    """Contact sheets of a run: ground truth (green) vs prediction (red), IoU and expression
    under each image, worst cases first."""
    from refground.data import Dataset
    from refground.evaluate.runner import read_predictions
    from refground.viz.grid import contact_sheets, locate_images, order_records

    if not predictions.is_file():
        raise ConfigError(f"predictions file not found: {predictions}")
    records = order_records(read_predictions(predictions), worst_first)[:limit]
    if not records:
        raise ConfigError(f"{predictions} holds no prediction records")
    samples = None
    if data is not None:
        run = _run_info(predictions)
        source = Dataset(data, dataset or run.get("dataset", "synthref"),
                         split_by or run.get("split_by", "synth"), images)
        split_data = source.split(split or run.get("split", "test"))
        samples = {s.sample_id: s for s in split_data.samples}
    items = locate_images(records, samples)
    written = contact_sheets(items, out, per_page, tile_size, title=str(predictions),
                             worst_first=worst_first)
    order = "worst first" if worst_first else "best first"
    console.print(f"wrote {len(written)} contact sheet(s) of {len(items)} predictions "
                  f"({order}) to {out}", soft_wrap=True)


@app.command()
def report(
    files: Annotated[list[Path] | None, typer.Argument(
        help="More metrics.json files or run directories.", show_default=False)] = None,
    metrics: Annotated[list[Path], typer.Option(
        "--metrics", "-m", help="A metrics.json or run directory (repeatable; further files "
                                "may follow as arguments).")] = [],  # noqa: B006
    names: Annotated[list[str], typer.Option(
        help="Run names, one per file (repeatable or comma-separated) [directory "
             "names].")] = [],  # noqa: B006
    out: Annotated[Path | None, typer.Option(
        help="Write report.md and bar charts (PNG) to this directory.")] = None,
) -> None:
    """Compare evaluation runs: a Markdown table of Acc@0.5/0.75/0.9, mIoU and n, overall and
    per expression type; with --out also grouped bar charts."""
    from refground.viz.report import load_runs, markdown_report, write_report

    paths = [*metrics, *(files or [])]
    run_names = [name.strip() for item in names for name in item.split(",") if name.strip()]
    runs = load_runs(paths, run_names)
    typer.echo(markdown_report(runs))
    if out is not None:
        written, charts = write_report(runs, out)
        err_console.print(f"wrote {written} and {len(charts)} chart(s) to {out}",
                          soft_wrap=True)


@app.command()
def curves(
    run: Annotated[Path, typer.Option(help="A training run directory (holds metrics.jsonl).")],
    out: Annotated[Path | None, typer.Option(help="PNG to write [RUN/curves.png].")] = None,
    metric: Annotated[str, typer.Option(help="Validation metric to plot.")] = "acc@0.5",
) -> None:
    """Training curves of a run: train loss, learning rate and validation Acc@0.5 against the
    step, as one PNG with three panels."""
    from refground.viz.curves import training_curves

    written, found = training_curves(run, out, metric)
    console.print(f"wrote {written} ({len(found.loss)} train and {len(found.val)} val points)",
                  soft_wrap=True)


@app.command()
def serve(
    host: Annotated[str, typer.Option(
        help="Interface to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    method: Annotated[str, typer.Option(
        help="Method for requests that name none (see `refground methods`).")] = DEFAULT_METHOD,
    also: Annotated[list[str], typer.Option(
        help="Another method requests may pick (repeatable); requests can use no method the "
             "server was not started with.")] = [],  # noqa: B006
    option: Annotated[list[str], typer.Option(
        "--option", "-o", help="Option of the default method, key=value, or of another "
                               "served method, METHOD:key=value (repeatable). Any option: "
                               "models, files, devices are chosen here.")] = [],  # noqa: B006
    max_upload_mb: Annotated[float, typer.Option(help="Largest image upload, MiB.")] = 10.0,
    max_pixels: Annotated[int, typer.Option(
        help="Largest image, in pixels (decompression bombs are refused).")] = 25_000_000,
    concurrency: Annotated[int, typer.Option(
        help="Requests decoding or computing at once; the rest wait.")] = 4,
    client_options: Annotated[bool, typer.Option(
        help="Let requests set the few safe options of a served method (bounded numbers, "
             "choices, switches: GET /methods lists them); never a model, file, cache, "
             "device or size.")] = True,
    preload: Annotated[bool, typer.Option(
        help="Load the served methods before listening.")] = True,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the HTTP API (POST /ground, GET /health, GET /methods, docs at /docs) and the web
    page at /. Requests pick among the served methods (--method, --also) and may set only the
    options GET /methods lists (visual-prompt: marker, color, stroke, blur_radius, backgrounds,
    sharp_window, aggregate; graph-resolve: membership, temperature, modifier_weight,
    relation_weight, entity_text, size_words; other methods: none); whatever names a model,
    file, cache or device is set here with -o, never by a request. Needs the serve extra
    (fastapi, uvicorn, python-multipart)."""
    from refground.errors import MissingDependencyError

    try:
        import uvicorn

        from refground.serve import GrounderCache, ServeConfig, create_app
        from refground.serve.options import route_operator_options
    except ImportError as exc:
        raise MissingDependencyError(f"refground serve needs the serve extra ({exc.name} is "
                                     "missing): pip install fastapi uvicorn python-multipart"
                                     ) from None
    served = route_operator_options(parse_assignments(option, "-o"), method, also)
    config = ServeConfig(method=method, options=served.pop(method), also=served,
                         max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                         max_pixels=max_pixels, concurrency=concurrency,
                         allow_client_options=client_options)
    cache = GrounderCache(max_models=config.max_models)
    if preload:  # a bad method or option fails here, as one line, not at the first request
        for name, options in config.served.items():
            err_console.print(f"loading {name} ...")
            cache.get(name, options)
    err_console.print(f"serving {', '.join(config.served)} at http://{host}:{port}/ "
                      "(API docs at /docs)")
    uvicorn.run(create_app(config, cache), host=host, port=port, log_level=log_level)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app on ``argv`` (default: the command line), turning deliberate
    errors into one readable line and exit status 2."""
    try:
        app(args=argv, standalone_mode=False)
    except RefgroundError as exc:
        # escaped: messages hold brackets ("boxes=[[x0, y0, x1, y1]]", "refground[viz]")
        # that rich would otherwise swallow as markup tags
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", soft_wrap=True)
        raise SystemExit(2) from None
    except (typer.Exit, typer.Abort) as exc:
        raise SystemExit(getattr(exc, "exit_code", 1)) from None
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise
