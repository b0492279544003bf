"""The one weight reader: PyTorch .bin (zip pickles, read without torch and
without running pickled code), safetensors (memory-mapped) and MindSpore
.ckpt; strict loading into cells by name; safetensors writing.

Tensors come out as numpy arrays; bf16 becomes float32 (numpy has no bf16).
"""
import json
import os
import pickle
import zipfile

import numpy as np
from safetensors.numpy import save_file

from .atomic import atomic_file


class WeightsError(ValueError):
    """A weight file that cannot be read, or whose tensors do not fit the model."""


# ----------------------------------------------------------------------------- safetensors

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bf16", "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _bf16_to_f32(raw):
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _iter_safetensors(path):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: truncated safetensors file ({size} bytes)")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise WeightsError(f"{path}: corrupt safetensors header (claims {n} bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    for name, info in header.items():
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            shape = tuple(info["shape"])
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path}: corrupt safetensors header entry for {name!r}: {info!r}") from None
        if end > len(data) or begin > end:
            raise WeightsError(f"{path}: truncated safetensors file: tensor {name!r} ends at byte {end}, "
                               f"data has {len(data)}")
        raw = data[begin:end]
        if dtype == "bf16":
            yield name, _bf16_to_f32(raw.view(np.uint16)).reshape(shape)
        else:
            yield name, raw.view(dtype).reshape(shape)


def save_safetensors(path, state):
    """Writes {name: array} to `path` atomically."""
    state = {k: np.ascontiguousarray(v) for k, v in state.items()}
    with atomic_file(path) as tmp:
        save_file(state, tmp, metadata={"format": "pt"})


# ----------------------------------------------------------------------------- PyTorch pickles

_TORCH_STORAGES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": "bf16",
                   "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32,
                   "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
                   "BoolStorage": np.bool_}


class _StorageType:
    def __init__(self, name):
        self.dtype = _TORCH_STORAGES[name]


class _LazyTensor:
    """A tensor whose bytes are read from the archive only when asked for."""

    def __init__(self, read, dtype, offset, size, stride):
        self.read, self.dtype, self.offset, self.size, self.stride = read, dtype, offset, size, stride

    def materialize(self):
        raw = np.frombuffer(self.read(), dtype=np.uint16 if self.dtype == "bf16" else self.dtype)
        arr = np.lib.stride_tricks.as_strided(raw[self.offset:], self.size,
                                              [s * raw.itemsize for s in self.stride])
        arr = np.array(arr)
        return _bf16_to_f32(arr) if self.dtype == "bf16" else arr


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    read, dtype = storage
    return _LazyTensor(read, dtype, storage_offset, tuple(size), tuple(stride))


class _OrderedDict(dict):
    """Stands in for OrderedDict; torch attaches `_metadata` to state dicts."""


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits tensor rebuilds, storages and OrderedDict; refuses every other global."""

    _ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
                ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
                ("collections", "OrderedDict"): _OrderedDict}

    def __init__(self, file, path, read_record):
        super().__init__(file)
        self.path = path
        self.read_record = read_record

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(name)
        raise WeightsError(f"{self.path}: refused to load: the pickle asks for the global {module}.{name}, "
                           "and only tensor data may be loaded")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise WeightsError(f"{self.path}: unsupported persistent id {pid!r}")
        storage_type, key = pid[1], pid[2]
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"{self.path}: unsupported storage type {storage_type!r}")
        return (lambda: self.read_record(key)), storage_type.dtype


def _iter_torch_zip(path):
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path}: corrupt or truncated PyTorch file ({e})") from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if not pkl:
            raise WeightsError(f"{path}: not a PyTorch checkpoint (no data.pkl in the archive)")
        prefix = pkl[0][:-len("data.pkl")]

        def read_record(key):
            try:
                return zf.read(f"{prefix}data/{key}")
            except (KeyError, zipfile.BadZipFile, OSError, EOFError) as e:
                raise WeightsError(f"{path}: corrupt or truncated PyTorch file (record {key}: {e})") from None

        try:
            with zf.open(pkl[0]) as f:
                obj = _RestrictedUnpickler(f, path, read_record).load()
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as e:
            raise WeightsError(f"{path}: corrupt or truncated PyTorch file ({e})") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise WeightsError(f"{path}: expected a state dict, found {type(obj).__name__}")
        for name, value in obj.items():
            if isinstance(value, _LazyTensor):
                yield name, value.materialize()


# ----------------------------------------------------------------------------- MindSpore

def _iter_mindspore_ckpt(path):
    import mindspore as ms
    try:
        params = ms.load_checkpoint(path)
    except (ValueError, RuntimeError, TypeError) as e:
        raise WeightsError(f"{path}: corrupt or unreadable MindSpore checkpoint ({e})") from None
    for name, param in params.items():
        yield name, param.asnumpy()


# ----------------------------------------------------------------------------- dispatch

def iter_tensors(path):
    """Yields (name, numpy array) one tensor at a time, whatever the format."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"weight file not found: {path}")
    if path.endswith(".safetensors"):
        return _iter_safetensors(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        return _iter_torch_zip(path)
    if magic[:1] == b"\x80":
        raise WeightsError(f"{path}: legacy (pre-1.6) PyTorch serialization is not supported; "
                           "re-save it with torch.save in a current PyTorch")
    if path.endswith(".ckpt"):
        return _iter_mindspore_ckpt(path)
    raise WeightsError(f"{path}: unknown weight format (expected .safetensors, a PyTorch .bin or a MindSpore .ckpt)")


def read_state_dict(path):
    return dict(iter_tensors(path))


def find_weight_file(folder, names):
    """The first of `names` present in `folder`."""
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise WeightsError(f"no weight file in {folder} (looked for {', '.join(names)})")


def _listing(items, limit=10):
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(str(i) for i in items[:limit]) + more


def load_into(cell, state, source="checkpoint", may_be_missing=lambda name: False):
    """Sets every parameter of `cell` from `state` by name. Missing (unless
    `may_be_missing(name)`), unexpected and mis-shaped tensors give one error
    naming them all."""
    from mindspore import Tensor
    params = dict(cell.parameters_and_names())
    missing = [n for n in params if n not in state and not may_be_missing(n)]
    unexpected = [n for n in state if n not in params]
    mismatched = [f"{n} {tuple(state[n].shape)} vs {tuple(params[n].shape)} in the model"
                  for n in state if n in params and tuple(state[n].shape) != tuple(params[n].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with the wrong shape: {_listing(mismatched)}")
    if problems:
        raise WeightsError(f"{source} does not fit {type(cell).__name__}: " + "; ".join(problems))
    for name, param in params.items():
        if name in state:
            param.set_data(Tensor(np.asarray(state[name]), dtype=param.dtype))


def state_dict(cell):
    return {name: p.asnumpy() for name, p in cell.parameters_and_names()}
