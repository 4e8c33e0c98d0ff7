"""Triton's CPU interpreter without two costs that change nothing it computes. The interpreted kernel tests
(conftest.run_in_triton_interpreter) import this first: the scan and conv scripts then take about 40 % less
time, the SSD ones (few helper calls) about 10 %.

* Every call of a ``@triton.jit`` helper from a running kernel patches ``triton.language`` again
  (``_patch_lang``: about 2.6 ms a call, 24,000 calls in test_kernels' compile script). The kernel's launch
  has already put the same interpreter functions there (a re-patch even skips the builtins: they are
  wrappers by then), and only the launch's own scope is restored when the kernel ends. So a helper call
  whose language modules the running launch has patched skips it.
* ``_get_np_dtype`` builds its table of 19 dtypes on every call (half a million calls a script); it is
  looked up once per dtype instead.

Read from Triton 3.6's interpreter: under another version the interpreter is left as it is.
"""

from __future__ import annotations

import inspect

import triton
import triton.language as tl
from triton.runtime import interpreter

PATCHED_VERSION = "3.6."

_launch_patched: set[int] = set()  # ids of the language modules the running kernel launch has patched


class _NothingToRestore:
    def restore(self) -> None:
        pass


class _LaunchScope:
    """A launch's patch scope; restoring it also ends the launch."""

    def __init__(self, scope) -> None:
        self.scope = scope

    def restore(self) -> None:
        self.scope.restore()
        _launch_patched.clear()


def _language_modules(fn) -> set[int]:
    """The modules ``_patch_lang(fn)`` patches: triton.language and triton.language.core as fn's globals hold them."""
    return {id(value) for value in fn.__globals__.values() if inspect.ismodule(value) and value in (tl, tl.core)}


def _patch_lang_once(fn, patch_lang=interpreter._patch_lang):
    langs = _language_modules(fn)
    if _launch_patched and langs <= _launch_patched:  # a helper called from the running kernel
        return _NothingToRestore()
    launch = not _launch_patched  # helpers are only called from within a launch
    scope = patch_lang(fn)
    _launch_patched.update(langs)
    return _LaunchScope(scope) if launch else scope


_np_dtypes: dict = {}


def _get_np_dtype_once(tt_dtype, get_np_dtype=interpreter._get_np_dtype):
    # A block maps as its element type does (get_np_dtype's own rule); blocks are not hashable.
    key = tt_dtype.element_ty if isinstance(tt_dtype, tl.block_type) else tt_dtype
    try:
        return _np_dtypes[key]
    except KeyError:
        _np_dtypes[key] = get_np_dtype(key)
        return _np_dtypes[key]
    except TypeError:  # a type that cannot be hashed: the table, as before
        return get_np_dtype(tt_dtype)


if triton.__version__.startswith(PATCHED_VERSION):
    interpreter._patch_lang = _patch_lang_once
    interpreter._get_np_dtype = _get_np_dtype_once
