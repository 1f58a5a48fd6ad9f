"""Memory: keep freed heap memory for the next training step instead of returning it to the OS."""

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3        # glibc's mallopt parameter numbers (malloc.h)


def configure_malloc(mmap_threshold=32 * 2 ** 20, trim_threshold=2 ** 31 - 1):
    """Tell glibc's malloc to serve arrays up to ``mmap_threshold`` bytes from its heap and to keep up to
    ``trim_threshold`` bytes of freed heap memory instead of handing it back to the OS. Returns True if
    applied (glibc found), False otherwise (e.g. macOS, musl): then nothing changes.

    Why: a training step allocates and frees the same few hundred MB every step (activations kept for the
    backward pass, gradients, Adam's new arrays, autograd's zero trees). By default glibc maps blocks above
    128 KiB freshly and returns freed memory at the top of the heap, so every step pays a page fault per
    4 KiB page it touches; on the 2-core VM of the benchmarks a fault costs ~2.6 us, i.e. ~0.7 ms per MB,
    which made the invertible step up to 1.6x slower and its time bimodal from run to run. With the
    thresholds raised, the second step onwards reuses resident memory. The process keeps its peak heap size
    until it exits (a training run reaches that peak every step anyway). Results are unchanged: this is
    about where bytes live, not what they hold.

    It is a process-wide setting, so mi-ref never calls it on import: ``mi-ref run`` and
    ``scripts/bench_steps.py`` call it once at start-up.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) and mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))


