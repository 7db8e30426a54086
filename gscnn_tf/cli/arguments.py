"""Arguments several `gscnn-tf` commands share, declared once: the config with its overrides,
a run's checkpoint, and an image size."""

from __future__ import annotations

import argparse
import re

from gscnn_tf.errors import UsageError


def add_config_arguments(parser: argparse.ArgumentParser,
                         config_help: str = "YAML config (defaults if omitted)",
                         example: str = "model.backbone.name=resnet50") -> None:
    """`--config PATH` and the repeatable `--set KEY=VALUE` (read by `load_config`)."""
    parser.add_argument("--config", default=None, help=config_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"config override, e.g. {example} (repeatable)")


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """`--checkpoint`, shared by the commands that load a run's model."""
    parser.add_argument("--checkpoint", metavar="N|ckpt-N|PREFIX",
                        help="which checkpoint of a run directory (default: the latest)")


def parse_size(text: str) -> tuple[int, int]:
    """"512x1024" -> (512, 1024) (height x width); a UsageError naming `text` otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise UsageError(f"--size '{text}': expected HEIGHTxWIDTH, e.g. 512x1024")
    return int(match[1]), int(match[2])
