"""The commands about the inputs of the experiments: ``mi-ref download`` (fetch and verify MNIST) and
``mi-ref baseline`` (the linear probe on the raw pixels, which every representation is compared with)."""

from .common import CLIError


def _cmd_download(args):
    """``mi-ref download mnist --to DIR [--mirror URL ...]``: fetch and verify the MNIST IDX files."""
    from ..download import DEFAULT_MIRRORS, download_mnist

    mirrors = args.mirror if args.mirror else DEFAULT_MIRRORS
    download_mnist(args.to, mirrors, timeout=args.timeout, deadline=args.deadline, min_rate=args.min_rate,
                   log=print)
    print(f"MNIST is ready in {args.to}: pass --data-dir {args.to} or set MI_REF_DATA={args.to}")
    return 0


def _cmd_baseline(args):
    """``mi-ref baseline --dataset digits|mnist``: the linear probe on raw top-half pixels."""
    import numpy as np

    from ..datasets import load
    from ..probe import pixel_baseline

    if not args.noise_std >= 0:
        raise CLIError(f"--noise-std must be >= 0, got {args.noise_std}")
    dataset = load(args.dataset, args.data_dir)
    accuracy = pixel_baseline(dataset, args.noise_std, np.random.default_rng(args.seed), seed=args.seed)
    print(f"pixel baseline ({args.dataset}, top-half pixels, noise std {args.noise_std:g}, seed {args.seed}): "
          f"test accuracy {accuracy:.4f}")
    return 0
