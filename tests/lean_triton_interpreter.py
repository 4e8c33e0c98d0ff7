"""Triton's CPU interpreter without seven costs that change nothing it computes. The interpreted kernel tests
(conftest.run_in_triton_interpreter) import this first: the scan and conv scripts then take about half the
time they take without it, the SSD ones 15-30 % less.

* Every call of a ``@triton.jit`` helper from a running kernel patches ``triton.language`` again
  (``_patch_lang``: about 2.6 ms a call, 24,000 calls in test_kernels' compile script). The kernel's launch
  has already put the same interpreter functions there (a re-patch even skips the builtins: they are
  wrappers by then), and only the launch's own scope is restored when the kernel ends. So a helper call
  whose language modules the running launch has patched skips it.
* ``_get_np_dtype`` builds its table of 19 dtypes on every call (half a million calls a script); it is
  looked up once per dtype instead.
* Every op makes new ``block_type`` and ``tuple_type`` objects (over a million a script), and each formats
  its ``name`` string (``'<(4, 8), fp32>'``, ``'[:constexpr_type[4],...]'``) as it is made, though only
  printing, mangling and compiling read it. The name is made when first read instead, from the same
  fields and with the same expression; everything else in their ``__init__`` is as it was.
* ``tl.associative_scan`` and ``tl.reduce`` with a combine function of their own (the scan kernels' linear
  recurrence; ``tl.flip``'s xor reduction) fall back to a loop over every element, each combine one pass
  through ``triton.language`` on a one-element tensor. The loop here takes the elements a slice across the
  scan or reduction axis at a time instead: each element is combined with the same operands, in the same
  order along the axis, by the same elementwise function. One-dimensional inputs take the original loop.
* Every tensor keeps its shape as a Triton ``tuple`` of constexprs (1.6 million of them in test_triton_conv's
  script), and each such tuple made its ``tuple_type`` (a list of constexpr types) as it was made; none of
  these was read in any of the eight scripts. A tuple given no type makes it from its values when first read.
* Each ``block_type`` unwrapped its shape twice over (``_unwrap_shape``: a new Triton tuple, then a list); a
  shape of ints and constexprs of ints is unwrapped in one pass to the same list of ints.
* Each integer add, sub and mul checks for overflow: the operands cast to int64, the op again, two compares
  and an and, all for a ``device_assert`` that the interpreter skips unless ``options.debug`` is on (its
  InterpreterOptions leave it off). With it off, the check is skipped before it computes them.

The last three, over the first four, run one after the other in forks of the tests' interpreter server: all
eight scripts 144 -> 100 s of CPU (test_triton_conv's 29 -> 18 s, test_triton_ssd's first 20 -> 11 s), with
byte-identical output.

The third and fourth, over the first two (the suite's eight interpreted scripts, run two at a time on two cores):
test_kernels' three 137 -> 96 s, test_triton_conv's 39 -> 31 s, test_triton_ssd's three 75 -> 64 s,
test_fused_loss's 11 -> 12 s; all eight 262 -> 204 s, and each prints byte-identical output either way.

Read from Triton 3.6's interpreter: under another version the interpreter is left as it is.
"""

from __future__ import annotations

import numpy as np
import triton
import triton.language as tl
import triton.language.core as core
from triton.language.semantic import TritonSemantic
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
    language, core_module = tl, tl.core
    return {id(value) for value in fn.__globals__.values() if value is language or value is core_module}


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


class _MadeWhenRead:
    """An attribute made by ``make(obj)`` when first read (then kept in ``obj.__dict__[slot]``, as the
    attribute the patched ``__init__`` set was); a value set on the object is kept as it was too."""

    def __init__(self, slot: str, make) -> None:
        self.slot, self.make = slot, make

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        try:
            return obj.__dict__[self.slot]
        except KeyError:
            made = obj.__dict__[self.slot] = self.make(obj)
            return made

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.slot] = value


# Triton 3.6's __init__s without their last line, ``self.name = ...``; the names are its expressions. In
# triton.language.core ``tuple`` is Triton's own tuple class, hence ``core.tuple`` where it reads ``tuple``.
def _shape_values(shape) -> list:
    """``core._unwrap_shape(shape)`` in one pass where every entry is an int or a constexpr holding one (the
    shapes blocks are made with); anything else goes through ``_unwrap_shape``."""
    values = [s.value if isinstance(s, core.constexpr) else s for s in shape]
    return values if all(type(v) is int for v in values) else core._unwrap_shape(shape)


def _block_type_init(self, element_ty, shape) -> None:
    self.element_ty = element_ty
    assert isinstance(shape, (list, core.tuple))
    self.shape = core.tuple(_shape_values(shape))
    if not self.shape:
        raise TypeError("0d block_type is forbidden")
    self.numel = core.validate_block_shape(self.shape)


def _tuple_type_init(self, types, fields=None) -> None:
    self.types = types
    self.fields = fields or [""] * len(types)


def _tuple_init(self, args, type=None) -> None:
    """Triton 3.6's ``tuple.__init__`` without making the type of a tuple given none (made when first read)."""
    self.values = [i for i in args]
    if isinstance(type, core.tuple_type):
        self.type = type
    elif type is not None:  # make_template in ASTFunction.deserialize may pass us a list/tuple
        self.type = core.tuple_type(type)


_sanitize_overflow = TritonSemantic.binary_op_sanitize_overflow_impl


def _sanitize_overflow_where_asserted(self, lhs, rhs, binary_op):
    """Triton 3.6's overflow check of integer add, sub and mul, skipped by the interpreter when its
    ``device_assert`` would do nothing (``options.debug`` off): every value it computes goes only to that."""
    if isinstance(self.builder, interpreter.InterpreterBuilder) and not self.builder.options.debug:
        return None
    return _sanitize_overflow(self, lhs, rhs, binary_op)


_generic_scan = interpreter.ScanOps.generic_scan
_generic_reduce = interpreter.ReduceOps.generic_reduce


def _at(axis: int, k: int) -> tuple:
    """Index of the slice at position k of ``axis``."""
    return (slice(None),) * axis + (k,)


def _scan_by_slices(self, input):
    """``ScanOps.generic_scan`` a slice across the axis at a time (Triton 3.6's, otherwise as written)."""
    shape = input[0].handle.data.shape
    if len(shape) < 2:
        return _generic_scan(self, input)
    axis = self.axis
    input_data = [arg.handle.data for arg in input]
    output_data = [np.zeros(shape, dtype=data.dtype) for data in input_data]
    for k in range(shape[axis]):
        data = tuple(self.to_tensor(d[_at(axis, k)], input[ii].dtype) for ii, d in enumerate(input_data))
        if k == 0:
            for j in range(len(output_data)):
                output_data[j][_at(axis, 0)] = data[j].handle.data
        else:
            acc_tuple = tuple(self.to_tensor(o[_at(axis, k - 1)], input[oi].dtype) for oi, o in enumerate(output_data))
            combine_fn_ret = self.combine_fn.fn(*acc_tuple, *data)
            acc_tuple = (combine_fn_ret, ) if not isinstance(combine_fn_ret, tuple) else combine_fn_ret
            for j in range(len(output_data)):
                output_data[j][_at(axis, k)] = acc_tuple[j].handle.data if isinstance(
                    acc_tuple[j], tl.core.tensor) else acc_tuple[j]
    return [self.to_tensor(data, input[i].dtype) for i, data in enumerate(output_data)]


def _reduce_by_slices(self, input):
    """``ReduceOps.generic_reduce`` a slice across the axis at a time (Triton 3.6's, otherwise as written)."""
    axis = self.axis
    input_shape = input[0].handle.data.shape
    if axis is None or len(input_shape) < 2:
        return _generic_reduce(self, input)
    input_data = [arg.handle.data for arg in input]
    output_shape = input_shape[0:axis] + input_shape[axis + 1:]
    output_data = [np.zeros(output_shape, dtype=data.dtype) for data in input_data]
    for k in range(input_shape[axis]):
        input_tuple = tuple(self.to_tensor(d[_at(axis, k)], input[ii].dtype) for ii, d in enumerate(input_data))
        if k == 0:
            for j in range(len(output_data)):
                output_data[j][...] = input_tuple[j].handle.data
        else:
            acc_tuple = tuple(self.to_tensor(o, input[oi].dtype) for oi, o in enumerate(output_data))
            combine_fn_ret = self.combine_fn.fn(*acc_tuple, *input_tuple)
            acc_tuple = (combine_fn_ret, ) if not isinstance(combine_fn_ret, tuple) else combine_fn_ret
            for j in range(len(output_data)):
                output_data[j][...] = acc_tuple[j].handle.data if isinstance(
                    acc_tuple[j], tl.core.tensor) else acc_tuple[j]
    ret = []
    for i, data in enumerate(output_data):
        if self.keep_dims:
            data = np.expand_dims(data, axis)
        ret.append(self.to_tensor(data, input[i].dtype))
    return ret


if triton.__version__.startswith(PATCHED_VERSION):
    interpreter._patch_lang = _patch_lang_once
    interpreter._get_np_dtype = _get_np_dtype_once
    core.block_type.__init__ = _block_type_init
    core.block_type.name = _MadeWhenRead("_name", lambda self: f"<{self.shape}, {self.element_ty}>")
    core.tuple_type.__init__ = _tuple_type_init
    core.tuple.__init__ = _tuple_init
    core.tuple.type = _MadeWhenRead("_type", lambda self: core._type_for_tuple_values(self.values))
    core.tuple_type.name = _MadeWhenRead(
        "_name", lambda self: "[" + ",".join([f"{k}:{v}" for k, v in zip(self.fields, self.types)]) + "]")
    TritonSemantic.binary_op_sanitize_overflow_impl = _sanitize_overflow_where_asserted
    interpreter.ScanOps.generic_scan = _scan_by_slices
    interpreter.ReduceOps.generic_reduce = _reduce_by_slices
