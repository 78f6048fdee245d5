"""The ``reslab`` command: one entry point, one sub-command per job.

uv run reslab --help
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="Table-1 style summary of a model: stages, params, multiply-adds"
    )
    p.add_argument("name", help="model name (see `reslab list`)")
    p.add_argument("--shortcut", choices=["A", "B", "C"], help="shortcut option (residual models)")
    p.add_argument("--stride-in", choices=["1x1", "3x3"], help="bottleneck stride position")
    p.add_argument("--num-classes", type=int, help="classifier outputs")
    p.add_argument("--input-size", type=int, help="input height = width (default: 32 or 224)")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from reslab.models import create_model
    from reslab.models.complexity import complexity, stage_table

    options = {
        k: v
        for k, v in (
            ("shortcut", args.shortcut),
            ("stride_in", args.stride_in),
            ("num_classes", args.num_classes),
        )
        if v is not None
    }
    model = create_model(args.name, **options)
    size = None
    if args.input_size is not None:
        size = (model.default_input_size[0], args.input_size, args.input_size)
    total = complexity(model, size)
    rows = stage_table(model, size)
    kind = (
        "plain"
        if not model.residual
        else ("pre-activation residual" if model.preact else "residual")
    )
    print(
        f"{args.name}: {kind} network, {model.stem_kind} family, input {'x'.join(map(str, total.input_size))}"
    )
    header = f"{'stage':<8} {'output':<12} {'params':>12} {'mult-adds':>14}  layout"
    print(header)
    print("-" * len(header))
    for r in rows:
        out = "x".join(map(str, r.output_size))
        print(f"{r.name:<8} {out:<12} {r.params:>12,} {r.macs:>14,}  {r.layout}")
    print("-" * len(header))
    print(
        f"{'total':<8} {'':<12} {total.params:>12,} {total.macs:>14,}  ({total.macs / 1e9:.3f}e9 multiply-adds)"
    )
    return 0


def _add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'plain*'")
    p.set_defaults(func=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    from reslab.models import get_model_spec, list_models

    for name in list_models(args.pattern):
        print(f"{name:<20} {get_model_spec(name).family}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reslab",
        description="Deep residual networks (He et al., 2016): models, training, analysis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_list, _add_info):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"reslab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
