"""``lightning-shifter fit``: your LightningModule and DataModule with the shifter callbacks, from a config.

LightningCLI parses the arguments (``--config``, ``--print_config``, ``--help``); a configuration error,
Lightning's or a callback's, is one ``error:`` line.
"""

from __future__ import annotations

import argparse
import warnings

from lightning_shifter.cli.common import lightning_errors


def run(args: argparse.Namespace) -> int:
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    # LightningCLI (jsonargparse) gives --config, --print_config, --help and exit code 2 on bad usage
    with lightning_errors():
        with warnings.catch_warnings():  # it warns that sys.argv is set too: it holds our own arguments
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
            cli = LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
                               subclass_mode_data=True, args=args.lightning_args, run=False,
                               save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "lightning-shifter fit"})
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return 0


def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit", add_help=False,
        help="train your LightningModule/DataModule with the shifter callbacks from a config (LightningCLI)",
        description="LightningCLI: `lightning-shifter fit --config cfg.yaml`; `fit --help` lists every option, "
                    "`fit --print_config` prints a complete config to start from.",
    )
    parser.set_defaults(handler=run)
