"""``reslab detect train|eval``: the detection commands, registered by :mod:`reslab.cli` (they
parse arguments and call :mod:`reslab.detection.train`).

    uv run reslab detect train detection/coco128_fpn_resnet50 --set train.iterations=20 --out runs/det
"""

from __future__ import annotations

import argparse
import json


def cmd_detect_train(args: argparse.Namespace) -> int:
    from reslab.detection import train as det

    overrides = [*args.overrides, *([f"data.data_dir={args.data_dir}"] if args.data_dir else [])]
    cfg = det.load_det_config(args.config, overrides)
    out = args.out or f"runs/{cfg.name}"
    print(f"run directory: {out}", flush=True)
    summary = det.fit_detector(cfg, out, restart=args.restart, progress=not args.no_progress)
    print(det.describe(summary))
    return 0 if summary["status"] == "finished" else 130


def cmd_detect_eval(args: argparse.Namespace) -> int:
    from reslab.detection import train as det

    result = det.evaluate_run(
        args.weights,
        data=args.data,
        limit=args.limit,
        draw_dir=args.visualize,
        draw=args.draw,
        threshold=args.threshold,
    )
    print(f"{det.describe(result)}\n{json.dumps(result)}")
    return 0


def add_detect(command, count) -> None:
    """The ``detect`` command group, made with the CLI's ``command`` helper (``count``: the
    argparse type of counts >= 0)."""
    about = "Faster R-CNN over reslab ResNets: train, evaluate, draw"
    p = command("detect", None, about)  # the verb's command runs
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    t = command(
        "train",
        cmd_detect_train,
        "train a detection config (resumable)",
        progress=True,
        data=True,
        sets="config override",
        restart=True,
        sub=verbs,
    )
    t.add_argument("config", help="config name (e.g. detection/coco128_fpn_resnet50) or YAML path")
    t.add_argument("--out", help="run directory (default runs/<config name>)")

    about = "COCO mAP (and VOC07 mAP for VOC data) of trained weights"
    e = command("eval", cmd_detect_eval, about, sub=verbs)
    e.add_argument("weights", help="run directory or model.safetensors of `detect train`")
    e.add_argument("--data", help="data root holding the run's validation set (default: its own)")
    e.add_argument("--limit", type=count, default=0, help="first N validation images (0: all)")
    e.add_argument("--visualize", help="write PNGs of the first --draw images with boxes here")
    e.add_argument("--draw", type=count, default=8, help="images to draw with --visualize")
    e.add_argument("--threshold", type=float, default=0.5, help="score threshold for drawing")
