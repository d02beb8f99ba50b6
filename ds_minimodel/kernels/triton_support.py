"""Where the Triton kernels can run, and a clear error where they cannot.

Triton decides once, when `triton` is first imported, whether `@triton.jit` compiles kernels
for the GPU or runs them in its CPU interpreter (`TRITON_INTERPRET=1`, the only way to run
Triton on CPU tensors): its own library functions (`tl.zeros`, `tl.max`, ...) are jit-decorated
at that import. So TRITON_INTERPRET must be in the environment before anything imports triton;
setting it later leaves compiled kernels that fail with Triton's cryptic "Cannot call
@triton.jit'd outside of the scope of a kernel". `check_device` turns both mistakes (CPU tensors
without the interpreter, the variable set too late) into an error that says what to do.
"""

import os


def interpreting():
    """True when TRITON_INTERPRET asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_available():
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install raising anything at import
        return False
    return True


def _triton_imported_interpreting():
    """The mode Triton's own jit library functions were built in at import."""
    from triton.language import standard

    return type(standard.zeros).__name__ == "InterpretedFunction"


def check_device(*tensors, what):
    """Raise a clear error when a Triton kernel is asked to run where it cannot."""
    if not triton_available():
        raise RuntimeError(f"{what}: kernels='triton' needs the `triton` package, which is not "
                           "importable here; use kernels='torch' or 'auto'")
    on_cuda = all(t.is_cuda for t in tensors)
    if not on_cuda and not interpreting():
        devices = sorted({str(t.device) for t in tensors})
        raise RuntimeError(
            f"{what}: kernels='triton' runs on CUDA tensors only (got {', '.join(devices)}); "
            "use kernels='auto' or 'torch' on CPU, or set TRITON_INTERPRET=1 before starting "
            "Python to run the Triton kernels in the (slow) CPU interpreter")
    if on_cuda and interpreting():
        raise RuntimeError(f"{what}: TRITON_INTERPRET=1 is set but the tensors are on CUDA; the "
                           "interpreter runs CPU tensors only")
    if interpreting() != _triton_imported_interpreting():
        raise RuntimeError(
            f"{what}: TRITON_INTERPRET was {'set' if interpreting() else 'unset'} after triton was "
            "imported, so the kernels were built for the other mode; set (or unset) it before the "
            "first `import triton` (e.g. in the environment of the process)")
