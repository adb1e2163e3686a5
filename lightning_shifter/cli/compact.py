"""``lightning-shifter compact``: a sparse model (a ``.pt2`` program or a state_dict) into a portfolio variant."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from lightning_shifter.cli.common import (
    CommandError,
    add_datamodule_args,
    import_class,
    json_object,
    load_datamodule,
    rich_console,
)
from lightning_shifter.portfolio import INPUT_DTYPES, Portfolio


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in re.split(r"[,x ]+", text.strip()) if d)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"expected positive sizes, batch first, such as 1,3,32,32; got {text!r}")
    return shape


def _load_source(args: argparse.Namespace) -> tuple[Any, tuple[int, ...] | None, float | None]:
    """The model to compact, the input shape it records (if any), and its density when the model's
    layers cannot tell it (an exported program: its weights of two or more dimensions)."""
    import pickle

    import torch

    source: Path = args.source
    if not source.is_file():
        raise CommandError(f"{source} does not exist or is not a file: pass a .pt2 program or a state_dict checkpoint")
    if source.suffix == ".pt2":
        from lightning_shifter.pt2 import load_program

        if args.model_class:
            raise CommandError("--model-class is for state_dict checkpoints; a .pt2 program carries its own graph")
        program = load_program(source)  # refuses archives that ask for pickle or code (ProgramError)
        shapes = [tuple(node.meta["val"].shape) for node in program.graph.nodes
                  if node.op == "placeholder" and node.name in program.graph_signature.user_inputs]
        weights = [w for w in program.state_dict.values() if w.ndim >= 2]  # conv and linear weights
        density = sum(int(w.count_nonzero()) for w in weights) / max(sum(w.numel() for w in weights), 1)
        return program.module(), shapes[0] if len(shapes) == 1 else None, density
    if not args.model_class:
        raise CommandError(f"{source} holds only weights: pass --model-class package.module.Class (and --init-args) "
                           "to build the model they belong to")
    try:
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise CommandError(f"cannot load {source} with weights_only=True ({str(err).splitlines()[0]}); save a plain "
                           "state_dict (torch.save(model.state_dict(), path)) or a Lightning checkpoint") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CommandError(f"{source} is not a state_dict (a dict of tensors) or a Lightning checkpoint")
    init_args = args.init_args
    if init_args is None:
        init_args = dict(checkpoint.get("hyper_parameters", {})) if "state_dict" in checkpoint else {}
    cls = import_class(args.model_class, "model class")
    try:
        model = cls(**init_args)
    except TypeError as err:
        raise CommandError(f"cannot create {args.model_class}(**{init_args}): {err}; fix --init-args") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or differently shaped tensors, all listed
        problems = str(err).splitlines()[1:]
        raise CommandError(f"{source} does not fit {args.model_class}({init_args}): {problems[0].strip()}"
                           f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; pass the "
                           "--init-args the model was trained with") from None
    example = getattr(model, "example_input_array", None)
    return model, tuple(example.shape) if isinstance(example, torch.Tensor) else None, None


def run(args: argparse.Namespace) -> int:
    from lightning_shifter.batches import example_input
    from lightning_shifter.variants import add_variant

    model, recorded_shape, density = _load_source(args)
    shape = args.input_shape or recorded_shape
    if shape is None:
        raise CommandError("the input shape is unknown: pass --input-shape, batch first, e.g. 1,3,32,32")
    datamodule = load_datamodule(args.datamodule, args.datamodule_args)
    portfolio = Portfolio.create(args.portfolio, shape, args.input_dtype)
    name = args.name or args.source.stem
    example = example_input(shape, args.input_dtype)
    console = rich_console()
    with console.status(f"compacting {args.source} into {args.portfolio}/{name}"):
        variant = add_variant(portfolio, model, example, name=name, round=args.round, density=density,
                              val_data=datamodule.val_dataloader() if datamodule is not None else None)
    summary = variant.compaction
    console.print(
        f"{name}: params {summary['params_before']:,} -> {variant.params:,} "
        f"({summary['params_before'] / max(variant.params, 1):.2f}x smaller), MACs {summary['macs_before']:,} -> "
        f"{variant.macs:,}, channels removed {summary['removed']}, max error {variant.exactness_error:.1e}"
        + "".join(f", {k} {v:.4f}" for k, v in variant.metrics.items())
    )
    if summary["channels_before"] == 0:
        console.print(
            "[yellow]note:[/yellow] compaction found no convolution or linear layer to analyse in this model "
            f"(ops it does not understand: {', '.join(summary['unsupported'][:6])}); the variant is saved "
            "unchanged. A torch.export program holds aten ops, not layers: compact the original nn.Module "
            "(its state_dict with --model-class) to remove channels."
        )
    console.print(f"saved {args.portfolio / name} (model.pt2) and its entry in {args.portfolio / 'manifest.json'}")
    return 0


def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compact", help="compact a sparse model (a .pt2 program or a state_dict) into a portfolio variant",
        description="Remove every channel, filter and neuron that provably does not change the output, verify "
                    "the result, and save it as a variant (model.pt2 + manifest entry) of a portfolio. Checkpoints "
                    "are loaded with torch.load(weights_only=True) and .pt2 programs only after their archive is "
                    "checked: no arbitrary objects are unpickled, no code in the file is run.",
    )
    parser.add_argument("source", type=Path, help="a torch.export program (.pt2) or a state_dict / Lightning checkpoint")
    parser.add_argument("--portfolio", type=Path, required=True, help="the portfolio folder (created if missing)")
    parser.add_argument("--name", help="the variant's name (default: the source's file name without extension)")
    parser.add_argument("--round", type=int, default=0, help="the pruning round it comes from (default: 0)")
    parser.add_argument("--model-class", metavar="CLASS_PATH", help="for a checkpoint: the model's class path")
    parser.add_argument("--init-args", type=json_object, default=None, metavar="JSON",
                        help="the model's constructor arguments (default: the checkpoint's hyper_parameters, or none)")
    parser.add_argument("--input-shape", type=_shape, default=None, metavar="N,C,H,W",
                        help="input shape, batch first (default: the program's, or the model's example_input_array)")
    parser.add_argument("--input-dtype", default="float32", choices=INPUT_DTYPES,
                        help="input dtype (default: float32; the native runner takes float32 only)")
    add_datamodule_args(parser, "measures the sparse and compacted accuracy on its val_dataloader()")
    parser.set_defaults(handler=run)
