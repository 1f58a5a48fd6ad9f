"""The ``mi-ref`` command. Thin: it parses arguments, calls the library and prints results.

Every subcommand is a function ``_cmd_NAME(args) -> exit code`` registered in :func:`build_parser`.
A ``ValueError`` or ``FileNotFoundError`` raised by the library becomes a one-line message on stderr and
exit code 2; nothing is written before the inputs are validated.
"""

import argparse
import sys

from . import __version__


class CLIError(Exception):
    """A user error found by the CLI itself (reported like ValueError, exit code 2)."""


def _cmd_download(args):
    """``mi-ref download mnist --to DIR [--mirror URL ...]``: fetch and verify the MNIST IDX files."""
    from .download import DEFAULT_MIRRORS, download_mnist

    mirrors = args.mirror if args.mirror else DEFAULT_MIRRORS
    download_mnist(args.to, mirrors, timeout=args.timeout, log=print)
    print(f"MNIST is ready in {args.to}: pass --data-dir {args.to} or set MI_REF_DATA={args.to}")
    return 0


def _cmd_baseline(args):
    """``mi-ref baseline --dataset digits|mnist``: the linear probe on raw top-half pixels."""
    import numpy as np

    from .data import load
    from .probe import pixel_baseline

    if not args.noise_std >= 0:
        raise CLIError(f"--noise-std must be >= 0, got {args.noise_std}")
    dataset = load(args.dataset, args.data_dir)
    accuracy = pixel_baseline(dataset, args.noise_std, np.random.default_rng(args.seed), seed=args.seed)
    print(f"pixel baseline ({args.dataset}, top-half pixels, noise std {args.noise_std:g}, seed {args.seed}): "
          f"test accuracy {accuracy:.4f}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="mi-ref",
        description="Reference implementation of 'On Mutual Information Maximization for Representation "
                    "Learning' (Tschannen et al., ICLR 2020).")
    parser.add_argument("--version", action="version", version=f"mi-ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("download", help="download and verify a dataset (MNIST)",
                       description="Fetch the four MNIST IDX files from public mirrors, verify the SHA-256 of "
                                   "their uncompressed contents, write them atomically; files already present "
                                   "and valid are skipped.")
    p.add_argument("dataset", choices=["mnist"], help="the dataset to download")
    p.add_argument("--to", required=True, metavar="DIR", help="target directory (created if missing)")
    p.add_argument("--mirror", action="append", metavar="URL",
                   help="base URL serving NAME.gz (repeat for fallbacks; replaces the default mirrors)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="network timeout per request (default 60)")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("baseline", help="linear-probe accuracy on raw top-half pixels",
                       description="Train the paper's linear probe on the raw top-half pixels (with optional "
                                   "shared Gaussian noise) and print its test accuracy.")
    p.add_argument("--dataset", choices=["digits", "mnist"], default="digits",
                   help="digits (embedded, default) or mnist (needs --data-dir or MI_REF_DATA)")
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="directory of the MNIST IDX files (default: $MI_REF_DATA)")
    p.add_argument("--noise-std", type=float, default=0.0, metavar="S",
                   help="std of the Gaussian noise added to every image (default 0)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the noise and of the probe's saga solver (default 0)")
    p.set_defaults(func=_cmd_baseline)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError) as err:
        print(f"mi-ref {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mi-ref {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
