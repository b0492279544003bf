"""The one weight reader and writer: PyTorch .bin/.ckpt (zip pickles, read
without torch and without running pickled code), safetensors and MindSpore
.ckpt; strict loading into cells by name.

Readers index a file first (name -> TensorRef: shape, dtype, and a loader),
and read a tensor's bytes only when it is loaded, so a converter holds one
tensor at a time. Writers take TensorRefs and stream them out the same way.
Loaded bf16 tensors come out as float32 (numpy has no bf16), exactly.
"""
import codecs
import errno
import json
import os
import pickle
import re
import zipfile

import numpy as np

from .atomic import atomic_file


class WeightsError(ValueError):
    """A weight file that cannot be read, or whose tensors do not fit the model."""


# safetensors' dtype names serve as the common names; None marks bf16, which numpy lacks
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
FLOATS = ("F64", "F32", "F16", "BF16")


def _bf16_to_f32(raw):
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16(x):
    """bf16 bits of float32 values, rounded to nearest even as torch does."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _from_raw(raw, dtype, shape):
    """A numpy array from the little-endian bytes of a tensor."""
    if dtype == "BF16":
        return _bf16_to_f32(raw.view(np.uint16)).reshape(shape)
    return raw.view(DTYPES[dtype]).reshape(shape)


def _itemsize(dtype):
    return 2 if dtype == "BF16" else np.dtype(DTYPES[dtype]).itemsize


def _numel(shape):
    n = 1
    for d in shape:  # Python ints: a crafted shape cannot overflow
        n *= d
    return n


def _shape(value, path, what):
    """A tensor shape from a file: a sequence of non-negative ints, or an error naming `what`."""
    if not isinstance(value, (list, tuple)) or not all(type(d) is int and d >= 0 for d in value):
        raise WeightsError(f"{path}: corrupt file: {what} has an invalid shape {value!r}")
    return tuple(value)


def _check_fits(path, name, numel, dtype):
    """Refuses a tensor larger than its file before anything is allocated for it."""
    nbytes = numel * _itemsize(dtype)
    if nbytes > os.path.getsize(path):
        raise WeightsError(f"{path}: corrupt file: tensor {name!r} claims {nbytes} bytes, "
                           "more than the file holds")
    return nbytes


def _dtype_name(array):
    for name, dtype in DTYPES.items():
        if dtype is not None and array.dtype == dtype:
            return name
    raise WeightsError(f"unsupported tensor dtype {array.dtype}")


class TensorRef:
    """A tensor not yet read: its shape and dtype name, `load()` for its values,
    and `source` (path, offset, size) when its bytes lie as they are in a file."""

    __slots__ = ("shape", "dtype", "_load", "source")

    def __init__(self, shape, dtype, load, source=None):
        self.shape, self.dtype, self._load, self.source = tuple(shape), dtype, load, source

    @classmethod
    def of(cls, array):
        array = np.asarray(array)
        return cls(array.shape, _dtype_name(array), lambda: array)

    def load(self):
        return self._load()

    def derived(self, shape, fn):
        """A ref whose values are fn(this tensor's values): a slice or reshape."""
        return TensorRef(shape, self.dtype, lambda: fn(self.load()))

    def bytes(self, dtype):
        """The little-endian bytes of the tensor as `dtype`, the name _out_dtype gave it."""
        values = self.load()
        if dtype == "BF16":
            return _f32_to_bf16(values)
        return np.ascontiguousarray(values, DTYPES[dtype])


# ----------------------------------------------------------------------------- safetensors

def _read_range(path, offset, count):
    with open(path, "rb") as f:
        f.seek(offset)
        raw = np.fromfile(f, np.uint8, count)
    if raw.size != count:
        raise WeightsError(f"{path}: truncated file (a tensor at byte {offset} needs {count} bytes)")
    return raw


_MAX_HEADER = 100 * 2 ** 20  # the safetensors format's own limit


def _index_safetensors(path):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: truncated safetensors file ({size} bytes)")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > _MAX_HEADER:
            raise WeightsError(f"{path}: corrupt safetensors header (claims {n} bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise WeightsError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    refs = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            if dtype not in DTYPES or type(begin) is not int or type(end) is not int:
                raise ValueError(dtype)
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path}: corrupt safetensors header entry for {name!r}: {info!r}") from None
        shape = _shape(shape, path, f"tensor {name!r}")
        if end > data_size or not 0 <= begin <= end:
            raise WeightsError(f"{path}: truncated safetensors file: tensor {name!r} ends at byte {end}, "
                               f"data has {data_size}")
        nbytes = _numel(shape) * _itemsize(dtype)
        if end - begin != nbytes:
            raise WeightsError(f"{path}: corrupt safetensors header: tensor {name!r} has {end - begin} "
                               f"bytes for {dtype} of shape {shape} ({nbytes} needed)")

        def load(begin=begin, end=end, dtype=dtype, shape=shape):
            return _from_raw(_read_range(path, 8 + n + begin, end - begin), dtype, shape)

        refs[name] = TensorRef(shape, dtype, load, (path, 8 + n + begin, end - begin))
    return refs


def _write_tensor(f, ref, dtype):
    """Appends a tensor's bytes to the unbuffered file `f`: copied file to file by
    the kernel when they are unchanged, else read, cast and written."""
    if ref.source is not None and dtype == ref.dtype and hasattr(os, "copy_file_range"):
        path, offset, count = ref.source
        with open(path, "rb") as src:
            done = 0
            while done < count:
                try:
                    n = os.copy_file_range(src.fileno(), f.fileno(), count - done, offset + done)
                except OSError as e:  # not across these filesystems: copy through memory
                    if done or e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    break
                if n == 0:
                    raise WeightsError(f"{path}: truncated file "
                                       f"(a tensor at byte {offset} needs {count} bytes)")
                done += n
            if done == count:
                return
    f.write(memoryview(ref.bytes(dtype)).cast("B"))


def _out_dtype(ref, dtype):
    return dtype if dtype is not None and ref.dtype in FLOATS else ref.dtype


def write_safetensors(path, refs, dtype=None, on_tensor=None):
    """Streams {name: TensorRef} to a safetensors file at `path`, atomically; floats cast to
    `dtype` if given; `on_tensor(name)` is called as each tensor is written."""
    out = {name: _out_dtype(ref, dtype) for name, ref in refs.items()}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, ref in refs.items():
        nbytes = int(np.prod(ref.shape, dtype=np.int64)) * _itemsize(out[name])
        header[name] = {"dtype": out[name], "shape": list(ref.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data to 8 bytes
    with atomic_file(path) as tmp, open(tmp, "wb", buffering=0) as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded)
        for name, ref in refs.items():
            _write_tensor(f, ref, out[name])
            if on_tensor is not None:
                on_tensor(name)


def save_safetensors(path, state):
    """Writes {name: array} to `path` atomically."""
    write_safetensors(path, {name: TensorRef.of(value) for name, value in state.items()})


# ----------------------------------------------------------------------------- MindSpore .ckpt
# A MindSpore checkpoint is one protobuf message: repeated Value {tag; TensorProto {dims, tensor_type,
# tensor_content}}. Written and read here field by field, so no tensor waits for the others.

_MS_TYPES = {"F64": "Float64", "F32": "Float32", "F16": "Float16", "BF16": "BFloat16", "I64": "Int64",
             "I32": "Int32", "I16": "Int16", "I8": "Int8", "U8": "UInt8", "BOOL": "Bool"}
_MS_NAMES = {v: k for k, v in _MS_TYPES.items()}


def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def write_mindspore_ckpt(path, refs, dtype=None, on_tensor=None):
    """Streams {name: TensorRef} to a MindSpore checkpoint that mindspore.load_checkpoint
    reads, atomically; `dtype` and `on_tensor` as for write_safetensors."""
    with atomic_file(path) as tmp, open(tmp, "wb", buffering=0) as f:
        for name, ref in refs.items():
            out = _out_dtype(ref, dtype)
            nbytes = int(np.prod(ref.shape, dtype=np.int64)) * _itemsize(out)
            dims = b"".join(_varint(1 << 3) + _varint(d) for d in ref.shape)
            tensor_head = dims + _field(2, _MS_TYPES[out].encode()) + _varint(3 << 3 | 2) + _varint(nbytes)
            tensor_len = len(tensor_head) + nbytes
            value_head = _field(1, name.encode()) + _varint(2 << 3 | 2) + _varint(tensor_len)
            f.write(_varint(1 << 3 | 2) + _varint(len(value_head) + tensor_len) + value_head + tensor_head)
            _write_tensor(f, ref, out)
            if on_tensor is not None:
                on_tensor(name)


class _Reader:
    """Protobuf wire format over a file: varints, (field, wire type) keys and
    length-delimited fields, each checked against where its message ends."""

    def __init__(self, f, path):
        self.f, self.path = f, path

    def corrupt(self, what):
        return WeightsError(f"{self.path}: corrupt or truncated MindSpore checkpoint ({what})")

    def varint(self):
        shift = result = 0
        for _ in range(10):  # a 64-bit varint has at most ten bytes
            byte = self.f.read(1)
            if not byte:
                raise self.corrupt("ends inside a record")
            result |= (byte[0] & 0x7F) << shift
            shift += 7
            if not byte[0] & 0x80:
                return result
        raise self.corrupt("a number longer than 64 bits")

    def key(self):
        key = self.varint()
        if key & 7 not in (0, 2):
            raise self.corrupt(f"wire type {key & 7}")
        return key >> 3, key & 7

    def length(self, end):
        """A length-delimited field's length, which must end by `end`."""
        n = self.varint()
        if self.f.tell() + n > end:
            raise self.corrupt("a field runs past its record")
        return n

    def text(self, end):
        return self.f.read(self.length(end)).decode(errors="replace")


def _index_mindspore_ckpt(path):
    size, refs = os.path.getsize(path), {}
    with open(path, "rb") as f:
        r = _Reader(f, path)
        while f.tell() < size:
            if r.key() != (1, 2):
                raise r.corrupt("not a Checkpoint message")
            value_end = r.length(size) + f.tell()
            name, dims, dtype, content = None, [], None, None
            while f.tell() < value_end:
                field = r.key()
                if field == (1, 2):
                    name = r.text(value_end)
                elif field == (2, 2):
                    tensor_end = r.length(value_end) + f.tell()
                    while f.tell() < tensor_end:
                        number, wire = r.key()
                        if number == 1 and wire == 0:
                            dims.append(r.varint())
                        elif number == 1:  # packed dims
                            end = r.length(tensor_end) + f.tell()
                            while f.tell() < end:
                                dims.append(r.varint())
                        elif number == 2:
                            dtype = r.text(tensor_end)
                        elif number == 3:
                            length = r.length(tensor_end)
                            content = (f.tell(), length)
                            f.seek(length, 1)
                        elif wire == 2:
                            f.seek(r.length(tensor_end), 1)
                        else:
                            r.varint()
                    if f.tell() != tensor_end:
                        raise r.corrupt(f"tensor {name!r} overruns its record")
                else:
                    raise WeightsError(f"{path}: {name!r} is not a dense tensor; not supported")
            if f.tell() != value_end or name is None or content is None or dtype not in _MS_NAMES:
                raise r.corrupt(f"at tensor {name!r}")
            shape, dtype = tuple(dims), _MS_NAMES[dtype]
            if content[1] != _numel(shape) * _itemsize(dtype):
                raise r.corrupt(f"tensor {name!r} has {content[1]} bytes for {dtype} of shape {shape}")

            def load(content=content, dtype=dtype, shape=shape):
                return _from_raw(_read_range(path, *content), dtype, shape)

            refs[name] = TensorRef(shape, dtype, load, (path,) + content)
    return refs


# ----------------------------------------------------------------------------- PyTorch pickles

_TORCH_STORAGES = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
                   "DoubleStorage": "F64", "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16",
                   "CharStorage": "I8", "ByteStorage": "U8", "BoolStorage": "BOOL"}


class _StorageType:
    def __init__(self, name):
        self.dtype = _TORCH_STORAGES[name]


class _LazyTensor:
    """What the unpickler makes of a tensor: where its values are, not the values.
    Its size, stride and offset were checked against its storage's length."""

    def __init__(self, read, dtype, offset, size, stride):
        self.read, self.dtype, self.offset, self.size, self.stride = read, dtype, offset, size, stride

    def materialize(self):
        raw = np.frombuffer(self.read(), dtype=np.uint16 if self.dtype == "BF16" else DTYPES[self.dtype])
        arr = np.array(np.lib.stride_tricks.as_strided(raw[self.offset:], self.size,
                                                       [s * raw.itemsize for s in self.stride]))
        return _bf16_to_f32(arr) if self.dtype == "BF16" else arr


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise WeightsError(f"corrupt PyTorch file: a tensor without storage ({type(storage).__name__})")
    size = _shape(size, storage.path, "a tensor")
    stride = _shape(stride, storage.path, "a tensor's stride")
    if len(stride) != len(size) or type(storage_offset) is not int or storage_offset < 0:
        raise WeightsError(f"{storage.path}: corrupt file: tensor of size {size} with stride {stride} "
                           f"and offset {storage_offset!r}")
    numel = _numel(size)
    # the last element the view reads must lie inside the storage, and the copy inside the file's size
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) if numel else 0
    if numel and last >= storage.numel:
        raise WeightsError(f"{storage.path}: corrupt file: a tensor of size {size} (stride {stride}, offset "
                           f"{storage_offset}) reads past its storage of {storage.numel} elements")
    _check_fits(storage.path, f"of size {size}", numel, storage.dtype)
    return _LazyTensor(storage.read, storage.dtype, storage_offset, size, stride)


class _Storage:
    """A storage record of the archive: its dtype, length, and how to read it."""

    def __init__(self, path, dtype, nbytes, read):
        if nbytes % _itemsize(dtype):
            raise WeightsError(f"{path}: corrupt file: a {dtype} storage of {nbytes} bytes")
        self.path, self.dtype, self.numel, self.read = path, dtype, nbytes // _itemsize(dtype), read


class _OrderedDict(dict):
    """Stands in for OrderedDict; torch attaches `_metadata` to state dicts."""


class _Inert:
    """Stands in for the bookkeeping objects training frameworks pickle beside
    the weights (Lightning callbacks, numpy scalars): it takes its arguments
    and state and runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits tensor rebuilds, storages, OrderedDict and a few inert
    bookkeeping classes; refuses every other global."""

    _ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
                ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
                ("collections", "OrderedDict"): _OrderedDict,
                ("_codecs", "encode"): codecs.encode}  # how numpy scalars pickle their bytes
    # found in the original Stable Diffusion .ckpt files, outside the state dict
    _INERT = {("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
              ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype")}

    def __init__(self, file, path, read_record, record_size):
        super().__init__(file)
        self.path = path
        self.read_record, self.record_size = read_record, record_size

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if (module, name) in self._INERT:
            return _Inert
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(name)
        raise WeightsError(f"{self.path}: refused to load: the pickle asks for the global {module}.{name}, "
                           "and only tensor data may be loaded")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise WeightsError(f"{self.path}: unsupported persistent id {pid!r}")
        storage_type, key = pid[1], pid[2]
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise WeightsError(f"{self.path}: unsupported storage {storage_type!r} {key!r}")
        return _Storage(self.path, storage_type.dtype, self.record_size(key), lambda: self.read_record(key))


def _index_torch_zip(path):
    try:
        zf = zipfile.ZipFile(path)
    except Exception as e:  # noqa: BLE001 - a crafted archive directory raises many kinds; none is data
        raise WeightsError(f"{path}: corrupt or truncated PyTorch file ({type(e).__name__}: {e})") from None
    pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
    if not pkl:
        raise WeightsError(f"{path}: not a PyTorch checkpoint (no data.pkl in the archive)")
    prefix = pkl[0][:-len("data.pkl")]

    def record(key):
        try:
            info = zf.getinfo(f"{prefix}data/{key}")
        except KeyError:
            raise WeightsError(f"{path}: corrupt or truncated PyTorch file (no record {key})") from None
        # torch stores records uncompressed; a compressed one could claim any size
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > os.path.getsize(path):
            raise WeightsError(f"{path}: corrupt PyTorch file "
                               f"(record {key} is compressed or larger than the file)")
        return info

    def read_record(key):
        # the archive stays open while any of its refs may be loaded
        info = record(key)
        try:
            return zf.read(info)
        except Exception as e:  # noqa: BLE001 - as above
            raise WeightsError(f"{path}: corrupt or truncated PyTorch file (record {key}: {e})") from None

    try:
        with zf.open(pkl[0]) as f:
            obj = _RestrictedUnpickler(f, path, read_record, lambda key: record(key).file_size).load()
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - a crafted pickle can raise almost anything; none of it is data
        raise WeightsError(f"{path}: corrupt or truncated PyTorch file ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {str(name): TensorRef(value.size, value.dtype, value.materialize)
            for name, value in obj.items() if isinstance(value, _LazyTensor)}


# ----------------------------------------------------------------------------- dispatch

def open_tensors(path):
    """{name: TensorRef} for a weight file in any of the formats, reading no tensor yet."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"weight file not found: {path}")
    if path.endswith(".safetensors"):
        return _index_safetensors(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        return _index_torch_zip(path)
    if magic[:1] == b"\x80":
        raise WeightsError(f"{path}: legacy (pre-1.6) PyTorch serialization is not supported; "
                           "re-save it with torch.save in a current PyTorch")
    if path.endswith(".ckpt"):
        return _index_mindspore_ckpt(path)
    raise WeightsError(f"{path}: unknown weight format (expected .safetensors, a PyTorch .bin/.ckpt or a "
                       "MindSpore .ckpt)")


def iter_tensors(path):
    """Yields (name, numpy array) one tensor at a time, whatever the format."""
    for name, ref in open_tensors(path).items():
        yield name, ref.load()


def read_state_dict(path):
    return dict(iter_tensors(path))


# ----------------------------------------------------------------------------- a model's weight files

# the file names a model's weights go by, in the order they are looked for; the first is what is written
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                     "diffusion_pytorch_model.ckpt")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.ckpt")

def _with_variant(name, variant):
    """diffusers' and transformers' variant naming: model.safetensors -> model.fp16.safetensors."""
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _index_names(name, variant):
    """The index files a sharded save of `name` may have (the variant's as both libraries have named it)."""
    if variant is None:
        return [name + ".index.json"]
    return [f"{name}.index.{variant}.json", _with_variant(name, variant) + ".index.json"]


def _shards(index_path):
    """The shard files an index names, each a file beside the index (never a path elsewhere)."""
    folder = os.path.dirname(index_path)
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
        files = sorted(set(weight_map.values()))
        if not all(isinstance(name, str) for name in files):
            raise TypeError("a shard name is not a string")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise WeightsError(f"{index_path}: not a valid shard index ({e})") from None
    for name in files:
        if os.path.basename(name) != name or name in (".", ".."):
            raise WeightsError(f"{index_path}: shard {name!r} is not a file name in {folder}")
        if not os.path.isfile(os.path.join(folder, name)):
            raise WeightsError(f"{index_path}: shard {name} is missing from {folder}")
    return [os.path.join(folder, name) for name in files]


def is_weight_file(name, names):
    """Whether `name` is one of `names`, a variant of one, a shard index or a shard of one."""
    for base in names:
        stem, ext = base.rsplit(".", 1)
        index = name.endswith(".json") and f".{ext}.index" in name
        if name.startswith(stem) and (name.endswith("." + ext) or index):
            return True
    return False


def find_weights(folder, names, variant=None):
    """The weight files of one model in `folder`: the first of `names` there (as
    the `variant`, e.g. "fp16", when given), as one file or as the shards its
    index lists. Returns a list of paths."""
    for name in names:
        single = os.path.join(folder, _with_variant(name, variant) if variant else name)
        if os.path.isfile(single):
            return [single]
        for index in _index_names(name, variant):
            if os.path.isfile(os.path.join(folder, index)):
                return _shards(os.path.join(folder, index))
    listed = os.listdir(folder) if os.path.isdir(folder) else []
    present = sorted(n for n in listed if is_weight_file(n, names))
    wanted = f"the {variant} variant of " if variant else ""
    hint = f"; found {', '.join(present)}" if present else ""
    if present and variant is None:
        hint += " (a variant: pass variant=, e.g. variant=\"fp16\" for *.fp16.*)"
    raise WeightsError(f"no weight file in {folder} "
                       f"(looked for {wanted}{', '.join(names)}, also sharded){hint}")


# diffusers before 0.15 named the VAE's attention query/key/value/proj_attn; current diffusers renames them
# while loading, and so does this reader
_LEGACY_ATTENTION = re.compile(r"^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$")
_LEGACY_RENAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# buffers older transformers saved beside the weights; they are recomputed, not loaded
_LEGACY_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def modern_name(name):
    """Current diffusers name of a tensor (legacy VAE attention names renamed)."""
    m = _LEGACY_ATTENTION.match(name)
    return f"{m.group(1)}{_LEGACY_RENAMES[m.group(2)]}.{m.group(3)}" if m else name


def open_weights(paths):
    """{current name: TensorRef} over one model's weight files (one file or its
    shards): legacy names renamed, legacy buffers left out; a name found twice
    is an error."""
    refs, origin = {}, {}
    for path in paths:
        for name, ref in open_tensors(path).items():
            if name in _LEGACY_BUFFERS:
                continue
            new = modern_name(name)
            if new in refs:
                raise WeightsError(f"{path}: tensor {new} appears twice (as {name}, and in {origin[new]})")
            refs[new], origin[new] = ref, f"{path}:{name}"
    return refs


def _listing(items, limit=10):
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(str(i) for i in items[:limit]) + more


def load_into(cell, state, source="checkpoint", may_be_missing=lambda name: False):
    """Sets every parameter of `cell` from `state` (arrays or TensorRefs, read
    one at a time) by name, cast to the parameter's dtype. Missing (unless
    `may_be_missing(name)`), unexpected and mis-shaped tensors give one error
    naming them all."""
    from mindspore import Tensor
    params = dict(cell.parameters_and_names())
    shapes = checkpoint_shapes(cell)
    missing = [n for n in params if n not in state and not may_be_missing(n)]
    unexpected = [n for n in state if n not in params]
    mismatched = [f"{n} {tuple(state[n].shape)} vs {shapes[n]} in the model"
                  for n in state if n in params and tuple(state[n].shape) != shapes[n]]
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
            value = state[name].load() if isinstance(state[name], TensorRef) else state[name]
            param.set_data(Tensor(np.asarray(value).reshape(param.shape), dtype=param.dtype))


def checkpoint_shapes(cell):
    """{parameter name: its shape in checkpoints}: the parameter's own, or the
    one its cell records in `checkpoint_shapes` (the CPU convolutions keep
    their weights [out, in * k * k])."""
    shapes = {name: tuple(p.shape) for name, p in cell.parameters_and_names()}
    for prefix, sub in cell.cells_and_names():
        for name, shape in getattr(sub, "checkpoint_shapes", {}).items():
            shapes[f"{prefix}.{name}" if prefix else name] = tuple(shape)
    return shapes


def state_dict(cell):
    shapes = checkpoint_shapes(cell)
    return {name: p.asnumpy().reshape(shapes[name]) for name, p in cell.parameters_and_names()}
