"""What a compiled graph is made of, as a hash: the cells' classes and attributes, the inputs' shapes and
dtypes, this package's sources. The compile cache files graphs by it; graph sharing groups cells by it."""
import functools
import hashlib
import os

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore.ops.primitive import Primitive

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Cell attributes that differ between two builds of the same cell, or that MindSpore (measured: 2.10) and
# CachedCompile set on a cell when it compiles, so that a compile would change the keys of later graphs
_VOLATILE = frozenset({
    "_create_time", "_compiled_signatures", "__compile_cell_hook__", "__parse_method__", "_compile_phase",
    "_compiled", "_has_mutable_args_list", "_is_check_and_refresh", "_lazy_backward_hook",
    "_lazy_backward_pre_hook", "_lazy_forward_hook", "_lazy_forward_pre_hook", "_phase_cache", "_scope",
    "arguments_key", "current_phase", "sequence_modified"})
# set empty by a compile where no flag was added
_VOLATILE_WHEN_EMPTY = frozenset({"_func_graph_flags"})


@functools.lru_cache(maxsize=None)
def sources_digest():
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(PACKAGE)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith((".py", ".cc", ".h")):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, PACKAGE).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


def _describe(value, digest, names):
    """Feeds what `value` contributes to a graph into `digest`. Cells met
    inside a cell are described where the walk over all cells reaches them."""
    if isinstance(value, Parameter):
        name = value.name if names else None
        digest.update(repr(("parameter", name, value.shape, str(value.dtype), value.requires_grad)).encode())
    elif isinstance(value, Tensor):
        digest.update(repr(("tensor", value.shape, str(value.dtype))).encode())
        digest.update(np.ascontiguousarray(value.asnumpy()).tobytes())
    elif isinstance(value, nn.Cell):
        digest.update(("cell " + type(value).__qualname__).encode())
    elif isinstance(value, Primitive):
        digest.update(repr(("primitive", value.name, sorted(value.attrs.items()))).encode())
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)}".encode())
        for item in value:
            _describe(item, digest, names)
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)}".encode())
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _describe(value[key], digest, names)
    elif value is None or isinstance(value, (bool, int, float, str, ms.dtype.Type)):
        digest.update(repr(value).encode())
    elif callable(value):
        name = getattr(value, "__qualname__", type(value))
        digest.update(f"{getattr(value, '__module__', '')}.{name}".encode())
    else:
        digest.update(("object " + type(value).__qualname__).encode())


def _describe_attributes(obj, digest, names):
    for name, value in sorted(vars(obj).items()):
        if name not in _VOLATILE and not (name in _VOLATILE_WHEN_EMPTY and not value):
            digest.update(name.encode())
            _describe(value, digest, names)


def model_digest(cell, names=True):
    """The hash of a cell: every sub-cell's class and attributes (parameters
    by name, shape, dtype and whether they train; without `names`, two
    instances of one configuration hash alike)."""
    digest = hashlib.sha256()
    for name, sub in cell.cells_and_names():
        digest.update(f"{name} {type(sub).__module__}.{type(sub).__qualname__}".encode())
        if isinstance(sub, nn.Dropout) and sub.p == 0:
            # the identity in a graph; its primitive's random seeds would
            # otherwise key every run's graph by the seed
            continue
        _describe_attributes(sub, digest, names)
    return digest.hexdigest()


def signature(x):
    return (tuple(x.shape), str(x.dtype)) if isinstance(x, Tensor) else repr(x)
