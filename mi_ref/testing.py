"""Helpers for a porter's own test suite (pytest or any other): golden-vector checks that fail with the
same report as ``mi-ref verify``.

    from mi_ref.testing import assert_matches_golden

    def test_my_bilinear_critic():
        S, gu, gv, gW = my_port.bilinear(...)
        assert_matches_golden("vectors", "critic_bilinear",
                              {"output/scores": S, "grad/u": gu, "grad/v": gv, "grad/param/W": gW})
"""

from .verify import compare


def assert_matches_golden(vectors_dir, component, arrays, precision=None, allow_missing=False):
    """Compare ``arrays`` (``{"output/...": ..., "grad/...": ...}`` named as in the component's file) with the
    golden vectors of ``component`` in ``vectors_dir`` (:func:`mi_ref.verify.compare`). Returns the report
    if it passes; raises ``AssertionError`` with the report's table (every array, its error as a multiple
    of its tolerance, the worst entry, layout hints) if it does not."""
    report = compare(vectors_dir, component, arrays, precision, allow_missing)
    if not report.passed:
        raise AssertionError("golden-vector check failed\n" + report.table(show_skipped=True))
    return report
