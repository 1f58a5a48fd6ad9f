"""Check another implementation against mi-ref's golden vectors (see :mod:`mi_ref.vectors`).

    report = compare("vectors/", "critic_bilinear", {"output/scores": S, "grad/u": gu, "grad/v": gv,
                                                      "grad/param/W": gW})
    print(report)           # a table: per array, max absolute and relative error, pass or fail
    assert report.passed

What is compared. Every ``output/`` and ``grad/`` array of the component is required (a missing one fails
the report unless ``allow_missing=True``); ``aux/`` arrays (intermediate values) are optional; ``input/``,
``param/``, ``cotangent/`` and ``const/`` arrays may be passed too (to check a conversion, e.g. a kernel
transposed back to mi-ref's layout). A name the file does not hold fails the report (a typo must not pass
silently), and so does a shape mismatch. When an array fails, the common slips of a port (a logsumexp over the
other axis, a permutation applied in the other direction, the padding side, eps inside the layer norm's square
root, the other form of Adam, ...) are computed on the component's stored inputs (:mod:`mi_ref.slips`), and
the report names the one that reproduces the given numbers in one line (``Report.slip``).

The numbers, per array, with ``a`` the given values and ``e`` the golden ones (both taken as float64):

* max abs err = max_i |a_i - e_i|;
* max rel err = max_i |a_i - e_i| / |e_i| over the entries with e_i != 0 (an entry that is exactly 0 is
  judged by the absolute term of the rule below alone);
* scale = max(1, max_i |e_i|);
* pass iff every entry is finite and |a_i - e_i| <= atol * scale + rtol * |e_i| (integer arrays: exact
  equality).

Why ``atol * scale``: an entry that comes out small because large terms cancel (a gradient entry of 0.09
in an array whose entries reach 14) carries the rounding error of those terms, which is proportional to the
array's magnitude rather than to the entry; a fixed absolute floor would be too tight for arrays of large
magnitude, and the relative term alone fails on entries that are (nearly) zero.

Tolerances (:data:`TOLERANCES`), chosen by ``precision`` or detected from the dtypes of the given arrays
(any float32 or float16 array -> "float32", else "float64"):

* float64: rtol 1e-10, atol 1e-12. Two correct float64 implementations differ only by rounding: another
  summation order (BLAS blocking, a different reduction) or an equivalent formula (log-sum-exp shifted by
  the row maximum or not, softplus as log1p(exp) or logaddexp). At the sizes here that stays below ~1e-13
  relative (sums of at most a few thousand terms through a few layers); PyTorch float64
  (``scripts/verify_torch_example.py``) reaches at most 1/300 of the tolerance. A real difference of
  formula still fails by orders of magnitude: eps 1e-5 instead of 1e-6 in the layer norm changes its
  outputs by ~1e-6 relative, a dropped 1e-7 floor of the RealNVP scale by ~1e-7.
* float32: rtol 1e-4, atol 1e-5. float32 rounds at 6e-8 relative, and errors grow through layers, a
  log-sum-exp and the reductions of a backward pass: the PyTorch float32 port of the example script errs by
  up to 1.4e-4 relative on entries produced by cancellation and ~2e-5 relative elsewhere, which is at most
  1/12 of this tolerance. The inputs and params are exactly representable in float32, so reading them adds
  no error. Components marked ``float64_only`` in the manifest hold values beyond float32's range (3.4e38);
  a float32 implementation is expected to fail them, and the report says so.
"""

import difflib
from dataclasses import dataclass, field

import numpy as onp

from .porting.names import torch_name
from .slips import identify as identify_slip
from .vectors import CATEGORIES, TOLERANCES, load_component, load_manifest

REQUIRED = ("output", "grad")           # categories an implementation must provide
OPTIONAL = ("aux",)                     # compared when given, never required
ECHO = ("input", "const", "param", "cotangent")   # compared when given (conversion checks)


@dataclass(frozen=True)
class ArrayCheck:
    """The comparison of one array.

    ``status``: "pass", "FAIL" (compared, out of tolerance or not finite), "missing" (a required array not
    given), "skipped" (an optional array not given, or a missing one with ``allow_missing``), "extra" (the
    file holds no array of that name) or "shape" (shapes differ). ``max_abs_err`` and ``max_rel_err`` are
    defined in the module docstring (None when nothing was compared); ``err_over_tol`` is the largest
    error as a multiple of its entry's tolerance, max_i |a_i - e_i| / (atol * scale + rtol * |e_i|), so
    that <= 1 passes; ``worst`` describes the entry with the largest excess over the tolerance, and a hint
    when the array in another layout (transposed) would pass.
    """

    name: str
    status: str
    expected_shape: tuple = None
    given_shape: tuple = None
    max_abs_err: float = None
    max_rel_err: float = None
    worst: str = ""
    err_over_tol: float = None

    @property
    def ok(self):
        return self.status in ("pass", "skipped")


@dataclass
class Report:
    """The result of :func:`compare` for one component.

    ``precision``, ``rtol``, ``atol``: the tolerances applied (see the module docstring for the rule);
    ``checks``: one :class:`ArrayCheck` per array (the file's order, then names the file does not hold);
    ``notes``: remarks (precision detected, float64-only component, unknown names); ``slip``: when arrays
    fail and a common slip of a port reproduces the given numbers (:mod:`mi_ref.slips`), the line that names
    it, else "". ``str(report)`` is a table: status, array, shape, max abs err, max rel err and, for
    problems, the worst entry.
    """

    component: str
    precision: str
    rtol: float
    atol: float
    checks: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    slip: str = ""

    @property
    def compared(self):
        """Checks of arrays actually compared (status pass or FAIL)."""
        return [c for c in self.checks if c.status in ("pass", "FAIL")]

    @property
    def failures(self):
        """Checks that make the report fail."""
        return [c for c in self.checks if not c.ok]

    @property
    def passed(self):
        """True iff at least one array was compared and no check failed."""
        return bool(self.compared) and not self.failures

    def counts(self):
        """``{status: number of checks}`` for every status (see :class:`ArrayCheck`), and "allowed": the
        required arrays not given under ``allow_missing``."""
        out = {status: sum(c.status == status for c in self.checks)
               for status in ("pass", "FAIL", "shape", "missing", "extra")}
        out["allowed"] = sum(c.status == "skipped" and c.name.split("/", 1)[0] in REQUIRED for c in self.checks)
        return out

    def summary(self):
        """One line: component, PASSED or FAILED, then the arrays counted by what happened to them, each array
        counted once: compared (same shape as the golden one), of those within tolerance and out of it;
        mismatched in shape; missing; names the file does not hold; and the tolerance applied. PASSED iff
        something was compared and no count after "within tolerance" is above 0 (required arrays not given
        under ``allow_missing`` are counted but do not fail)."""
        n = self.counts()
        head = f"{n['pass'] + n['FAIL']} arrays compared, {n['pass']} within tolerance"
        parts = [head + (f", {n['FAIL']} out of tolerance" if n["FAIL"] else "")]
        for key, text in (("shape", "mismatched in shape"), ("missing", "missing"),
                          ("extra", "not in the component's file"), ("allowed", "not given (allowed)")):
            if n[key]:
                parts.append(f"{n[key]} {text}")
        return (f"{self.component}: {'PASSED' if self.passed else 'FAILED'}: {'; '.join(parts)} "
                f"({self.precision} tolerance: rtol {self.rtol:g}, atol {self.atol:g})")

    def __str__(self):
        return self.table()

    def table(self, show_skipped=False, shared_notes=()):
        """The report as text; optional arrays that were not given (``aux/``) are listed only with
        ``show_skipped`` (a count says how many were left out); notes in ``shared_notes`` are left to the
        caller (:func:`format_reports` prints a note shared by several components once)."""
        rows = [("status", "array", "shape", "max abs err", "max rel err", "err/tol", "")]
        hidden = 0
        for c in self.checks:
            if c.status == "skipped" and c.name.startswith("aux/") and not show_skipped:
                hidden += 1
                continue
            shape = _shape_text(c.expected_shape if c.expected_shape is not None else c.given_shape)
            if c.status == "shape":
                shape = f"{_shape_text(c.given_shape)} != {_shape_text(c.expected_shape)}"
            ratio = "-" if c.err_over_tol is None else f"{c.err_over_tol:.3g}"
            rows.append((c.status, c.name, shape, _num(c.max_abs_err), _num(c.max_rel_err), ratio, c.worst))
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = [self.summary()]
        for r in rows:
            lines.append("  " + "  ".join(r[i].ljust(widths[i]) for i in range(6)) + ("  " + r[6] if r[6] else ""))
        if hidden:
            lines.append(f"  ({hidden} optional aux/ arrays not given and not listed; --show-skipped lists them)")
        if self.slip:
            lines.append(f"  slip: {self.slip}")
        lines += [f"  note: {n}" for n in self.notes if n not in shared_notes]
        return "\n".join(line.rstrip() for line in lines)


def _shape_text(shape):
    return "-" if shape is None else "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def _num(x):
    return "-" if x is None else f"{x:.3e}"


def detect_precision(outputs):
    """"float32" if any given floating array has fewer than 64 bits, else "float64"."""
    for value in outputs.values():
        dtype = onp.asarray(value).dtype
        if dtype.kind == "f" and dtype.itemsize < 8:
            return "float32"
    return "float64"


def _check_precision(precision):
    if precision is not None and precision not in TOLERANCES:
        raise ValueError(f"precision must be one of {sorted(TOLERANCES)} (or None to detect it from the dtypes "
                         f"of the given arrays), got {precision!r}")


def _compare_array(name, given, expected, rtol, atol):
    given = onp.asarray(given)
    if given.shape != expected.shape:
        hint = _layout_hint(given, expected, rtol, atol)
        return ArrayCheck(name, "shape", expected.shape, given.shape,
                          worst=f"given shape {given.shape}, golden shape {expected.shape}" + hint)
    if expected.dtype.kind in "iub":
        if given.dtype.kind not in "iubf":
            return ArrayCheck(name, "FAIL", expected.shape, given.shape,
                              worst=f"dtype {given.dtype} is not numeric")
        diff = onp.abs(given.astype(onp.float64) - expected.astype(onp.float64))
        max_abs = float(diff.max()) if diff.size else 0.0
        ok = bool(onp.array_equal(given, expected))
        worst = "" if ok else f"integer arrays must be equal; first difference at {_first(diff > 0)}"
        return ArrayCheck(name, "pass" if ok else "FAIL", expected.shape, given.shape, max_abs, None, worst)
    if given.dtype.kind not in "iuf":
        return ArrayCheck(name, "FAIL", expected.shape, given.shape, worst=f"dtype {given.dtype} is not real")
    a = given.astype(onp.float64)
    e = expected.astype(onp.float64)
    if a.size == 0:
        return ArrayCheck(name, "pass", expected.shape, given.shape, 0.0, 0.0, err_over_tol=0.0)
    diff, excess, ratio = _errors(a, e, rtol, atol)
    finite = onp.isfinite(a)
    nonzero = e != 0
    max_abs = float(diff.max())
    max_rel = float((diff[nonzero] / onp.abs(e[nonzero])).max()) if nonzero.any() else 0.0
    if (excess <= 0).all():
        return ArrayCheck(name, "pass", expected.shape, given.shape, max_abs, max_rel, err_over_tol=ratio)
    index = onp.unravel_index(int(onp.argmax(onp.where(onp.isnan(excess), onp.inf, excess))), e.shape)
    where = "" if e.ndim == 0 else f" at {tuple(int(i) for i in index)}"
    what = "not finite" if not finite[index] else "out of tolerance"
    n_bad = int((~(excess <= 0)).sum())
    worst = (f"{n_bad} of {e.size} entries {what}; worst{where}: given {float(a[index])!r}, "
             f"golden {float(e[index])!r}" + _layout_hint(given, expected, rtol, atol))
    return ArrayCheck(name, "FAIL", expected.shape, given.shape, max_abs, max_rel, worst, ratio)


def _errors(a, e, rtol, atol):
    """(|a - e| with inf where a is not finite, the excess over the tolerance, the largest error as a
    multiple of its tolerance) for float64 arrays of one shape."""
    with onp.errstate(invalid="ignore", over="ignore"):
        diff = onp.abs(a - e)
    diff = onp.where(onp.isfinite(a), diff, onp.inf)
    tol = atol * max(1.0, float(onp.abs(e).max())) + rtol * onp.abs(e)
    with onp.errstate(invalid="ignore", over="ignore"):
        excess = diff - tol
        ratio = float(onp.max(diff / tol))
    return diff, excess, ratio


# Layouts a port commonly has instead of mi-ref's: (transpose to apply to the given array, what it means)
_LAYOUTS = {
    2: [((1, 0), "the transposed array would pass: mi-ref stores a dense kernel as (in, out), e.g. PyTorch's "
                 "Linear.weight is (out, in); give W.T")],
    4: [((2, 3, 1, 0), "this is PyTorch's conv layout (C_out, C_in, kh, kw); mi-ref's is (kh, kw, C_in, C_out): "
                       "give weight.permute(2, 3, 1, 0)"),
        ((0, 2, 3, 1), "this looks like NCHW; mi-ref's images are NHWC: give x.permute(0, 2, 3, 1)")],
}


def _layout_hint(given, expected, rtol, atol):
    """A hint when the given array, rearranged as a port often has it, would pass."""
    if given.dtype.kind not in "iuf" or expected.dtype.kind != "f":
        return ""
    for axes, text in _LAYOUTS.get(given.ndim, []):
        moved = onp.transpose(given, axes)
        if moved.shape == expected.shape and moved.size and (
                _errors(moved.astype(onp.float64), expected.astype(onp.float64), rtol, atol)[1] <= 0).all():
            return f"; hint: {text}"
    return ""


def _first(mask):
    index = onp.argwhere(mask)
    return tuple(int(i) for i in index[0]) if index.size else ()


# ----------------------------------------------------------------------------------------------------
# did you mean: component names, array names, PyTorch's parameter names


def _close(word, choices, n):
    """The ``n`` choices closest to ``word`` (difflib's ratio >= 0.6), best first."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)


def unknown_component(name, components):
    """The message for a component name the manifest does not hold, with the closest names."""
    close = _close(name, components, 1)
    if close:
        return f"unknown component {name!r}; did you mean {close[0]!r}?"
    return f"unknown component {name!r}; the manifest holds {list(components)}"


def suggest_name(name, golden_names):
    """The array of a component that an unknown ``name`` most likely means, or None.

    A PyTorch state-dict name (``layers.0.weight``, ``grad/layers.0.weight``, ``grad/param/net.layers.1.bias``)
    maps to mi-ref's parameter path by :func:`mi_ref.porting.names.torch_name` (the inverse: "." for "/",
    ``weight`` for a kernel ``W``, ``bias`` for its ``b``): under ``grad/`` to the gradient
    ``grad/param/PATH``, else to the parameter ``param/PATH``. Any other name gets the component's array
    name closest to it after the category (difflib's ratio >= 0.6, ignoring case), or None.
    """
    category, sep, rest = name.partition("/")
    if not sep or category not in CATEGORIES:
        category, rest = "", name
    if rest.startswith("param/"):
        rest = rest[len("param/"):]
    paths = {torch_name(n[len("param/"):]): n[len("param/"):] for n in golden_names if n.startswith("param/")}
    if rest in paths:
        return f"grad/param/{paths[rest]}" if category == "grad" else f"param/{paths[rest]}"

    def body(n):            # what follows the category: all names share "grad/" or "param/" with many others
        head, sep, tail = n.lower().partition("/")
        return tail if sep and head in CATEGORIES else n.lower()

    scored = [(difflib.SequenceMatcher(None, body(name), body(n)).ratio(), n) for n in golden_names]
    ratio, best = max(scored, default=(0.0, None))
    return best if ratio >= 0.6 else None


def compare(vectors_dir, component, outputs, precision=None, allow_missing=False):
    """Compare an implementation's arrays with the golden vectors of one component.

    ``vectors_dir``: a directory written by ``mi-ref vectors``; ``component``: a name from its manifest
    (e.g. "critic_bilinear"); ``outputs``: ``{array name: array}`` with names as in the component's file
    ("output/scores", "grad/u", "grad/param/W", ...); ``precision``: "float64", "float32" or None (detect
    from the dtypes, see :func:`detect_precision`); ``allow_missing``: do not fail for required arrays that
    are not given (e.g. an implementation without gradients), as long as at least one array is compared.

    When an array fails, the common slips of a port are tried on the component's stored inputs
    (:func:`mi_ref.slips.identify`); ``report.slip`` names the one that reproduces the given numbers. A name
    the file does not hold gets the array it most likely means (:func:`suggest_name`).

    Returns a :class:`Report`. Raises ``FileNotFoundError`` for a missing directory or file and
    ``ValueError`` for an unknown component, a bad precision or ``outputs`` that is not a dict of arrays.
    """
    _check_precision(precision)
    if not hasattr(outputs, "items"):
        raise ValueError(f"outputs must be a dict {{array name: array}}, got {type(outputs).__name__}")
    manifest = load_manifest(vectors_dir)
    if component not in manifest["components"]:
        raise ValueError(unknown_component(component, manifest["components"]))
    golden = load_component(vectors_dir, component, manifest)
    detected = precision is None
    precision = detect_precision(outputs) if detected else precision
    tol = TOLERANCES[precision]
    rtol, atol = tol["rtol"], tol["atol"]
    report = Report(component, precision, rtol, atol)
    if detected:
        report.notes.append(f"precision {precision} detected from the dtypes of the given arrays")
    entry = manifest["components"][component]
    if entry.get("float64_only") and precision == "float32":
        report.notes.append(f"float64-only component: {entry['float64_only']}")

    for name, expected in golden.items():
        category = name.split("/", 1)[0]
        if name in outputs:
            report.checks.append(_compare_array(name, outputs[name], expected, rtol, atol))
        elif category in REQUIRED:
            status = "skipped" if allow_missing else "missing"
            report.checks.append(ArrayCheck(name, status, expected.shape,
                                            worst="not given" + (" (allowed)" if allow_missing else "")))
        elif category in OPTIONAL:
            report.checks.append(ArrayCheck(name, "skipped", expected.shape, worst="optional, not given"))
    extra = [name for name in outputs if name not in golden]
    unguessed = []
    for name in extra:
        guess = suggest_name(name, list(golden))
        shape = onp.shape(outputs[name])
        if guess is None:
            unguessed.append(name)
            worst = f"{component} holds no array of this name"
        elif golden[guess].shape != shape:
            worst = (f"{component} holds no array of this name; did you mean {guess}, in mi-ref's layout "
                     f"{_shape_text(golden[guess].shape)}?")
        else:
            worst = f"{component} holds no array of this name; did you mean {guess}?"
        report.checks.append(ArrayCheck(name, "extra", None, shape, worst=worst))
    if unguessed:
        names = [n for n in golden if n.split("/", 1)[0] in REQUIRED + OPTIONAL]
        report.notes.append(f"unknown names {unguessed}; {component} expects {names}")
    if not report.compared:
        report.notes.append("nothing was compared: pass arrays named as in the component file, e.g. "
                            f"{[n for n in golden if n.startswith('output/')][:3]}")
    given_float = {onp.asarray(v).dtype for v in outputs.values() if onp.asarray(v).dtype.kind == "f"}
    if precision == "float64" and any(d.itemsize < 8 for d in given_float):
        report.notes.append("some given arrays are not float64 but were compared at float64 tolerances")
    if any(c.status == "FAIL" for c in report.checks):
        report.slip = identify_slip(component, entry["config"], golden, outputs,
                                    lambda a, e: _errors(a, e, rtol, atol)[1])
    return report


def split_results(results, components, component=None):
    """Group a flat ``{"COMPONENT/ARRAY": array}`` dict by component: ``{component: {array: value}}``.

    With ``component``: its arrays alone, named plainly ("output/y"). Keys may be plain array names or
    ``COMPONENT/ARRAY``; prefixed keys of other components are left out (so one results file of many
    components can be checked one component at a time). ``ValueError`` for an unknown component, for keys
    that name no known component, and when ``component`` has no arrays in the results.
    """
    if not results:
        raise ValueError("the results hold no arrays")
    if component is not None:
        if component not in components:
            raise ValueError(unknown_component(component, components))
        prefix = component + "/"
        own = {}
        for key, value in results.items():
            if key.startswith(prefix):
                own[key[len(prefix):]] = value
            elif key.split("/", 1)[0] not in components:
                own[key] = value
        if not own:
            held = sorted({k.split("/", 1)[0] for k in results})
            raise ValueError(f"the results hold no arrays of {component}, only of {held}; check one of those with "
                             "--component NAME, or all of them without --component")
        return {component: own}
    grouped, bad = {}, []
    for key, value in results.items():
        head, sep, rest = key.partition("/")
        if not sep or head not in components:
            bad.append(key)
            continue
        grouped.setdefault(head, {})[rest] = value
    if bad:
        hint = ""
        if all(k.split("/", 1)[0] in REQUIRED + OPTIONAL + ECHO for k in bad):
            hint = " (these look like plain array names: pass the component, e.g. --component NAME)"
        else:
            guesses = [f"{k} -> {close[0]}/{k.partition('/')[2]}" for k in bad[:5]
                       for close in [_close(k.partition("/")[0], components, 1)] if close and "/" in k]
            if guesses:
                hint = f" (did you mean: {'; '.join(guesses)}?)"
        raise ValueError(f"results keys must be COMPONENT/ARRAY with a component of the manifest; "
                         f"not understood: {bad[:5]}{' ...' if len(bad) > 5 else ''}{hint}; "
                         f"components: {list(components)}")
    return grouped


def compare_results(vectors_dir, results, component=None, precision=None, allow_missing=False):
    """:func:`compare` for every component named in a flat results dict (see :func:`split_results`).

    Returns a list of :class:`Report`, in the manifest's component order.
    """
    _check_precision(precision)
    manifest = load_manifest(vectors_dir)
    grouped = split_results(results, manifest["components"], component)
    order = [c for c in manifest["components"] if c in grouped]
    return [compare(vectors_dir, c, grouped[c], precision, allow_missing) for c in order]


def unchecked_components(vectors_dir, reports):
    """The components of the manifest that no report covers (in the manifest's order)."""
    checked = {r.component for r in reports}
    return [c for c in load_manifest(vectors_dir)["components"] if c not in checked]


def all_passed(reports, unchecked=(), require_all=False):
    """True iff every report passed and, with ``require_all``, no component went unchecked."""
    return bool(reports) and all(r.passed for r in reports) and not (require_all and unchecked)


def format_reports(reports, unchecked=None, require_all=False, show_skipped=False, show_unchecked=False):
    """All reports' tables and a summary: "K of N components checked", how many were not checked (their
    names with ``show_unchecked``; ``unchecked`` given), the notes that several components share (printed
    once, naming the components unless all have it) and how many of the checked components passed."""
    n_ok = sum(r.passed for r in reports)
    seen = {}
    for r in reports:
        for note in r.notes:
            seen.setdefault(note, []).append(r.component)
    shared = {note: names for note, names in seen.items() if len(names) > 1}
    parts = [r.table(show_skipped, shared) for r in reports]
    lines = []
    if unchecked is not None:
        total = len(reports) + len(unchecked)
        if not unchecked:
            lines.append(f"{len(reports)} of {total} components checked (all of them)")
        elif show_unchecked:
            lines.append(f"{len(reports)} of {total} components checked; {len(unchecked)} not checked: "
                         + ", ".join(unchecked))
        else:
            lines.append(f"{len(reports)} of {total} components checked; {len(unchecked)} not checked "
                         "(--show-unchecked lists them)")
    verdict = "all passed" if n_ok == len(reports) else f"{len(reports) - n_ok} FAILED"
    lines.append(f"{n_ok} of {len(reports)} checked components passed ({verdict})")
    for note, names in shared.items():
        lines.append(f"note: {note} ({'every checked component' if len(names) == len(reports) else ', '.join(names)})")
    if require_all and unchecked:
        lines.append(f"FAILED: --require-all, and {len(unchecked)} component(s) were not checked")
    return "\n\n".join(parts) + "\n\n" + "\n".join(lines)
