"""Hostile weight files: seeded mutations of valid .bin, .safetensors and
MindSpore .ckpt files (truncations, bit flips, edited safetensors headers,
edited pickle integers: tensor sizes, strides and offsets) must each load or
raise WeightsError: never crash, hang, raise anything else, or return a
tensor larger than its file. The reader runs in a child process, so a crash
fails this test instead of ending pytest. TUNEAVIDEO_FUZZ_COUNT sets the
number of mutations per file (default 1000)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch
from safetensors.torch import save_file

from tuneavideo_ms.weights import TensorRef, read_state_dict, write_mindspore_ckpt

CHILD = textwrap.dedent('''
    import io, json, os, pickletools, random, sys, zipfile
    from tuneavideo_ms.weights import WeightsError, read_state_dict

    def pickle_ints(data):
        """(position, width) of each small int literal in a pickle: sizes, strides, offsets."""
        widths = {"BININT": 4, "BININT1": 1, "BININT2": 2}
        return [(pos + 1, widths[op.name]) for op, _, pos in pickletools.genops(data) if op.name in widths]

    def mutate_zip(data, rnd):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            entries = [(info, zf.read(info)) for info in zf.infolist()]
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            for info, body in entries:
                if info.filename.endswith("data.pkl"):
                    body = bytearray(body)
                    pos, width = rnd.choice(pickle_ints(bytes(body)))
                    value = rnd.choice([0, 1, 2, 3, 255, 256, 65535, 2 ** 31 - 1,
                                        rnd.randrange(2 ** (8 * width))])
                    body[pos:pos + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
                    body = bytes(body)
                zf.writestr(info.filename, body)
        return out.getvalue()

    def mutate_header(data, rnd):
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        name = rnd.choice([k for k in header if k != "__metadata__"])
        entry = header[name]
        field = rnd.choice(["shape", "data_offsets", "dtype"])
        if field == "dtype":
            entry["dtype"] = rnd.choice(["F16", "F64", "I8", "BOOL", "X"])
        else:
            values = entry[field]
            i = rnd.randrange(len(values)) if values else 0
            new = rnd.choice([0, 1, -1, 10 ** 12, rnd.randrange(1 << 20)])
            entry[field] = values[:i] + [new] + values[i + 1:]
        encoded = json.dumps(header).encode()
        return len(encoded).to_bytes(8, "little") + encoded + data[8 + n:]

    def mutate(data, kind, rnd):
        choice = rnd.randrange(4)
        if choice == 0:
            return data[:rnd.randrange(len(data))]
        if choice == 1:
            out = bytearray(data)
            for _ in range(rnd.randint(1, 8)):
                out[rnd.randrange(len(out))] ^= 1 << rnd.randrange(8)
            return bytes(out)
        if choice == 2 and kind == ".bin":
            return mutate_zip(data, rnd)
        if choice == 2 and kind == ".safetensors":
            return mutate_header(data, rnd)
        out = bytearray(data)  # a run of random bytes (varints and lengths in a .ckpt)
        start = rnd.randrange(len(out))
        out[start:start + 4] = bytes(rnd.randrange(256) for _ in range(4))
        return bytes(out[:len(data)])

    folder, count = sys.argv[1], int(sys.argv[2])
    outcomes = {}
    for name in sorted(os.listdir(folder)):
        if not name.startswith("valid"):
            continue
        data = open(os.path.join(folder, name), "rb").read()
        kind = os.path.splitext(name)[1]
        for seed in range(count):
            rnd = random.Random(seed)
            path = os.path.join(folder, "mutant" + kind)
            with open(path, "wb") as f:
                f.write(mutate(data, kind, rnd))
            print(name, seed, flush=True)
            try:
                state = read_state_dict(path)
            except WeightsError:
                outcomes[kind + " refused"] = outcomes.get(kind + " refused", 0) + 1
                continue
            size = os.path.getsize(path)
            for tensor_name, value in state.items():
                # every value comes from the file's bytes (bf16 doubles in size as float32)
                assert value.nbytes <= 2 * size, f"{name} seed {seed}: {tensor_name} has {value.nbytes} bytes"
            outcomes[kind + " loaded"] = outcomes.get(kind + " loaded", 0) + 1
    print("OUTCOMES", json.dumps(outcomes), flush=True)
''')


def test_mutated_weight_files_load_or_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
               "norm.bias": rng.standard_normal(4).astype(np.float16), "ids": np.arange(5, dtype=np.int64)}
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()} | {
        "view": torch.arange(12, dtype=torch.float32).reshape(3, 4)[:, ::2]}, tmp_path / "valid.bin")
    save_file({k: torch.from_numpy(v) for k, v in tensors.items()}, str(tmp_path / "valid.safetensors"))
    write_mindspore_ckpt(tmp_path / "valid.ckpt", {k: TensorRef.of(v) for k, v in tensors.items()})
    for name in ("valid.bin", "valid.safetensors", "valid.ckpt"):
        state = read_state_dict(tmp_path / name)
        assert all(np.array_equal(state[k], v) for k, v in tensors.items()), name
    count = int(os.environ.get("TUNEAVIDEO_FUZZ_COUNT", "1000"))
    (tmp_path / "child.py").write_text(CHILD)
    child = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path), str(count)],
                           capture_output=True, text=True, timeout=60 + count // 5)
    last = child.stdout.strip().splitlines()[-1:] or ["nothing"]
    assert child.returncode == 0, f"the reader failed on {last[0]} (file, seed): {child.stderr[-3000:]}"
    assert last[0].startswith("OUTCOMES")
    print(last[0])
