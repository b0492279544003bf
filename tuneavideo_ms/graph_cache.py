"""Compiled graphs kept on disk, so a second run loads its training step (or
an inference run its denoiser) instead of compiling it again (SD 1.5's
training step on CPU: 40-50 s, and a third of the mid config's peak memory,
which the compiler leaves behind).

MindSpore's compile cache is unsafe on its own: it files graphs by the order
in which a process compiles them and checks only the entry script's sources,
so a different model, input shape or constant, or graphs compiled in another
order, load the wrong graph without an error (measured with 2.10). Here a
graph gets its own folder, named by a hash of everything the graph is made
of: this package's sources, MindSpore's version, the backend, each cell's
class and attributes (constant tensors by value, parameters by name, shape,
dtype and whether they train) and the inputs' shapes and dtypes. Parameter
values are not part of a graph, so a cached step trains whatever weights are
loaded. One graph per process: MindSpore keeps writing to the folder of the
first cached compile, whatever the path says later, so later graphs would
share it by compile order again; they compile.

On CPU a graph not in the cache yet compiles in a forked copy of the process,
which stores it and exits; the process then loads it. MindSpore's compiler
leaves about 1 GiB in the heap for the rest of the run (mid's training step:
freed memory scattered among the compiled graph's objects, which malloc_trim
cannot return, mimalloc neither), and a loaded graph leaves none of it.
That copy compiles once, so it can let the cells of one configuration share
a graph (share_graphs), which a process compiling again could not.

TUNEAVIDEO_COMPILE_CACHE names the folder (default
~/.cache/tuneavideo_ms/graphs); "off" turns the cache off.
"""
import contextlib
import ctypes
import functools
import gc
import hashlib
import logging
import os
import shutil
import signal
import sys
import time

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore.ops.primitive import Primitive

from tuneavideo_ms import backend

logger = logging.getLogger(__name__)

PACKAGE = os.path.dirname(os.path.abspath(__file__))
# Cell attributes that differ between two builds of the same cell
_VOLATILE = frozenset({"_create_time"})
_CACHE_VARIABLES = ("MS_COMPILER_CACHE_ENABLE", "MS_COMPILER_CACHE_PATH")
_first = {"taken": False}  # whether this process has had its cached compile


def cache_home():
    """This package's cache folder (compiled kernels, graphs)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tuneavideo_ms")


def cache_root():
    """The graphs' folder, or None when TUNEAVIDEO_COMPILE_CACHE is "off"."""
    root = os.environ.get("TUNEAVIDEO_COMPILE_CACHE") or os.path.join(cache_home(), "graphs")
    return None if root.lower() == "off" else root


@functools.lru_cache(maxsize=None)
def _sources_digest():
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
        digest.update(f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value))}".encode())
    else:
        digest.update(("object " + type(value).__qualname__).encode())


def _describe_attributes(obj, digest, names):
    for name, value in sorted(vars(obj).items()):
        if name not in _VOLATILE:
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


def _signature(x):
    return (tuple(x.shape), str(x.dtype)) if isinstance(x, Tensor) else repr(x)


def graph_folder(cell, inputs):
    """The folder of the graph of `cell` run on `inputs`."""
    key = (ms.__version__, backend.device(), backend._state["kernels"], ms.get_context("mode"), _sources_digest(),
           model_digest(cell), [_signature(x) for x in inputs])
    return os.path.join(cache_root(), hashlib.sha256(repr(key).encode()).hexdigest()[:32])


@contextlib.contextmanager
def compile_cache(cell, inputs):
    """MindSpore's compile cache, in the folder of the graph of `cell` on
    `inputs`, for the compiles inside, if this process has not used it yet;
    nothing changes when the cache is off. Yields the folder, or None."""
    if cache_root() is None or _first["taken"]:
        yield None
        return
    if not (sys.argv and os.path.isfile(sys.argv[0])):
        # MindSpore hashes the entry script with the graph and fails on `python -c`
        logger.info("compile cache off: the entry point %r is not a script file", sys.argv[:1])
        yield None
        return
    _first["taken"] = True
    folder = graph_folder(cell, inputs)
    logger.info("compile cache: %s", folder)
    # read at each compile; set_context's enable_compile_cache is deprecated
    saved = {name: os.environ.get(name) for name in _CACHE_VARIABLES}
    os.environ.update(MS_COMPILER_CACHE_ENABLE="1", MS_COMPILER_CACHE_PATH=folder)
    try:
        yield folder
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class CachedCompile:
    """Mixed into a cell: its graph-mode compiles go through the compile
    cache. MindSpore calls `compile` on every call of a cell in graph mode and
    compiles only new input signatures; so does this, for the cache."""

    def compile(self, *args, **kwargs):
        inputs = list(args) + [kwargs[k] for k in sorted(kwargs)]
        signature = tuple(_signature(x) for x in inputs) + tuple(sorted(kwargs))
        seen = self.__dict__.setdefault("_compiled_signatures", set())
        if signature in seen:
            super().compile(*args, **kwargs)
            return
        compile = functools.partial(super().compile, *args, **kwargs)
        with compile_cache(self, inputs) as folder:
            if folder is not None and not _holds_graph(folder) and _forks_compiles():
                compile_in_child(functools.partial(_compile_sharing_graphs, self, compile))
            compile()
        seen.add(signature)
        _return_freed_memory()


def share_graphs(cell):
    """Gives the sub-cells of `cell` whose class sets `shares_graph` one graph
    per configuration, MindSpore's lazy inline keyed by the sub-cell's digest
    without parameter names: a compile then parses and type-infers each
    configuration once per input shape, not each instance (mid's training
    step: compiler peak 1.82 -> 1.53 GiB, compile 41 -> 23 s). For a process
    that compiles once: on a second compile of a shared graph at new shapes,
    MindSpore 2.10 has reshaped one call site's tensors to another's shape
    (measured with MindSpore 2.10)."""
    keys = []
    for _, sub in cell.cells_and_names():
        if getattr(sub, "shares_graph", False):
            sub.cell_init_args = "lazy_inline_" + model_digest(sub, names=False)
            sub.no_inline = False  # inlined by the frontend: lazy_inline's policy "front" (the other fails on CPU)
            keys.append(sub.cell_init_args)
    if keys:
        logger.info("%d cells share %d graphs", len(keys), len(set(keys)))


def _compile_sharing_graphs(cell, compile):
    # compile_in_child's child compiles once, then exits
    share_graphs(cell)
    compile()


def _forks_compiles():
    # Linux only (measured there; macOS's system libraries are unsafe in a forked child); Ascend's and GPU's
    # runtimes do not survive a fork; msrun's workers share their cluster's sockets
    return sys.platform == "linux" and backend.device() == "CPU" and "MS_ROLE" not in os.environ


def _holds_graph(folder):
    """Whether `folder` holds a stored graph. One with an empty file (a writer killed mid-write, a full disk)
    is removed, so the graph compiles again and replaces it."""
    files = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
    if any(os.path.getsize(path) == 0 for path in files):
        logger.warning("compile cache: %s is incomplete (an empty file); compiling the graph again", folder)
        shutil.rmtree(folder, ignore_errors=True)
        return False
    return any(path.endswith(".mindir") for path in files)


def compile_in_child(compile):
    """Runs `compile` in a forked copy of this process and returns whether it
    succeeded. The copy exits at once, with whatever its compile left behind;
    when it fails, the caller compiles in this process and meets the error."""
    start = time.perf_counter()
    _return_freed_memory()  # the parent's pages stay resident beside the child's compile (mid: 0.13 GiB less)
    gc.freeze()  # else the child's collections write to, and so copy, every page of the parent's objects
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _die_with(parent)
            compile()
            code = 0
        finally:
            os._exit(code)  # skips atexit handlers and the buffers this process inherited
    gc.unfreeze()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        logger.info("compiled in a child process in %.1f s; loading the graph it stored", time.perf_counter() - start)
    else:
        logger.warning("compiling in a child process failed (exit status %d); compiling here", code)
    return code == 0


def _die_with(parent):
    """Asks Linux to kill this (forked) process when its parent dies, so a compile never outlives the run
    that wanted it (an interrupted or killed run)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _return_freed_memory():
    """Hands the memory the compiler freed back to the system: glibc keeps it
    otherwise (after compiling mid's training step: 0.28 GiB, all of it RSS
    through the run). A no-op on other C libraries."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)
