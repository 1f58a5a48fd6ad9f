"""The commands about golden vectors: ``mi-ref vectors`` (write them) and ``mi-ref verify`` (compare another
implementation's outputs with them)."""

from .. import __version__
from .common import CLIError, _warn


def _cmd_vectors(args):
    """``mi-ref vectors --out DIR [--seed S]``: golden vectors for checking other implementations."""
    from ..vectors import generate

    if args.seed < 0:
        raise CLIError(f"--seed must be >= 0, got {args.seed}")
    manifest = generate(args.out, args.seed)
    n_arrays = sum(len(entry["arrays"]) for entry in manifest["components"].values())
    print(f"wrote {len(manifest['components'])} component files ({n_arrays} arrays) and manifest.json to "
          f"{args.out} (seed {args.seed}, mi-ref {__version__})")
    print(f"array names, shapes, meanings and conventions: {args.out}/manifest.json; check your outputs with: "
          f"mi-ref verify {args.out} RESULTS.npz")
    for line in _golden_notes():
        _warn(line)
    return 0


def _golden_notes():
    """One line per registered critic, estimator or encoder that the golden vectors do not check (a plugin's):
    never left out silently."""
    from ..declarations import golden_gaps
    from ..vectors.components import WITHOUT_GOLDEN_SPEC
    lines = [f"{kind} {name!r} has no golden vectors: no component checks it (add one to COMPONENTS in "
             f"mi_ref/vectors/components.py, or say why it has none in WITHOUT_GOLDEN_SPEC['{kind}'] there)"
             for kind, name in golden_gaps()]
    lines += [f"{kind} {name!r} has no golden vectors (declared none: {why})"
              for kind, names in WITHOUT_GOLDEN_SPEC.items() for name, why in names.items()]
    return lines


def _cmd_verify(args):
    """``mi-ref verify DIR RESULTS.npz``: compare an implementation's outputs with the golden vectors."""
    from pathlib import Path

    from ..files import load_npz
    from ..verify import all_passed, compare_results, format_reports, unchecked_components

    path = Path(args.results)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    if path.read_bytes()[:6] == b"\x93NUMPY":
        raise CLIError(f"{path} holds a single array (.npy); save a dict of arrays with numpy.savez(path, "
                       "**{'COMPONENT/ARRAY': array, ...})")
    results = load_npz(path, "results file")
    reports = compare_results(args.vectors, results, args.component, args.precision, args.allow_missing)
    unchecked = unchecked_components(args.vectors, reports)
    print(format_reports(reports, unchecked, args.require_all, args.show_skipped, args.show_unchecked))
    return 0 if all_passed(reports, unchecked, args.require_all) else 1
