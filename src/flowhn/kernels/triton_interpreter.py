"""Triton's CPU interpreter (TRITON_INTERPRET=1), as the CPU tests run the Triton kernels: importing
this module patches what it needs, once, and only when the interpreter is on."""

from __future__ import annotations

import os

import numpy as np


def fix_loop_bounds() -> None:
    """Triton 3.6's CPU interpreter (TRITON_INTERPRET=1) turns a runtime loop bound into a 1-element
    numpy array and calls int() on it, which NumPy >= 2.3 refuses. Patch that one conversion; the
    compiled GPU path never goes through it."""
    try:
        int(np.zeros(1))
        return
    except TypeError:
        pass
    from triton.runtime import interpreter

    patch_tensor = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET", "0") == "1":
    fix_loop_bounds()
