"""The compile cache: a graph's folder changes with anything the graph is made
of, a run loads every graph an earlier run compiled, in any order, and a
training step loaded from it trains the weights loaded now."""
import json
import os
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from tuneavideo_ms.runtime import compile_child
from tuneavideo_ms.runtime.compile_cache import CompileCache, holds_graph

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Toy(nn.Cell):
    def __init__(self, scale=2.0, shift=0.5, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.weight = Parameter(Tensor(rng.standard_normal((1, 4, 1, 1, 1)).astype(np.float32)),
                                name="weight")
        self.shift = Tensor(np.full((4,), shift, np.float32))
        self.scale = scale
        self.dropout = nn.Dropout(p=0.0)

    def construct(self, x, t, context):
        return self.dropout(x * self.weight * self.scale) + self.shift.reshape(1, 4, 1, 1, 1) + context.mean()


def _folder(cell, shape=(1, 4, 2, 2, 2), dtype=ms.float32):
    return CompileCache("/cache").graph_folder(cell, [Tensor(np.zeros(shape), dtype)])


def test_graph_folder_follows_what_the_graph_is_made_of(monkeypatch):
    ms.set_seed(1)
    base = _folder(Toy())
    ms.set_seed(2)  # other dropout seeds, other weights: the same graph
    assert _folder(Toy(seed=1)) == base and os.path.dirname(base) == "/cache"
    assert _folder(Toy(scale=3.0)) != base  # a Python constant
    assert _folder(Toy(shift=0.25)) != base  # a constant tensor, by value
    frozen = Toy()
    frozen.weight.requires_grad = False
    assert _folder(frozen) != base
    recomputed = Toy()
    recomputed.recompute()
    assert _folder(recomputed) != base
    assert _folder(Toy(), shape=(1, 4, 2, 2, 3)) != base
    assert _folder(Toy(), dtype=ms.float16) != base
    monkeypatch.setenv("TUNEAVIDEO_COMPILE_CACHE", "off")
    assert CompileCache.from_environment().root is None


def test_a_compile_leaves_the_graphs_key_as_it_was():
    """MindSpore sets attributes on the cells it compiles; they must not change the key of a later graph
    holding the same cells (as the guided denoiser holds the UNet the inversion compiled)."""
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        toy = Toy()
        before = _folder(toy)
        x = Tensor(np.ones((1, 4, 2, 2, 2), np.float32))
        toy(x, Tensor(np.ones(1, np.float32)), Tensor(np.ones((1, 3, 5), np.float32))).asnumpy()
        assert _folder(toy) == before
    finally:
        ms.set_context(mode=mode)


STEP = """
import json, logging, sys
import mindspore as ms, numpy as np
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {tests!r})
from test_graph_cache import Toy
from tuneavideo_ms import runtime, training
from tuneavideo_ms.optim import AdamW
runtime.setup("CPU", "graph")
toy = Toy(seed=int(sys.argv[1]))
step = training.TrainStep(toy, [toy.weight], AdamW([toy.weight]), "epsilon", 0.18, 1.0)
rng = np.random.default_rng(0)
t = lambda *s: ms.Tensor(rng.standard_normal(s).astype(np.float32))
alpha = lambda a: ms.Tensor(np.full((1, 1, 1, 1, 1, 1), a, np.float32))
inputs = (t(1, 4, 2, 2, 2), t(1, 4, 2, 2, 2), t(1, 1, 4, 2, 2, 2), t(1, 1, 4, 2, 2, 2), alpha(0.6),
alpha(0.8),
          ms.Tensor([[10.0]]), t(1, 3, 5), ms.Tensor(1.0), ms.Tensor(0.1))
losses = [float(step(*inputs)[0].asnumpy()) for _ in range(2)]
other = float(step(*inputs[:-3], t(1, 3, 6), *inputs[-2:])[0].asnumpy())  # a second graph
print("RESULT", json.dumps([losses, other, toy.weight.asnumpy().ravel().tolist()]))
"""


def _train(folder, seed, cache):
    script = folder / "train_step.py"  # a file: MindSpore's cache hashes the entry script
    script.write_text(STEP.format(tests=os.path.join(REPO, "tests")))
    # GLOG_v=2: MindSpore's warnings, which this package hides by default, count the compiles
    env = dict(os.environ, PYTHONPATH=REPO, TUNEAVIDEO_COMPILE_CACHE=str(cache), GLOG_v="2")
    out = subprocess.run([sys.executable, str(script), str(seed)], env=env, capture_output=True, text=True,
                         check=True)
    # MindSpore's warning when a cached compile finds no graph and compiles (2.10's words)
    compiles = out.stderr.count("Execute all the compilation actions")
    return json.loads(out.stdout.split("RESULT", 1)[1]), compiles, "compiled in a child process" in out.stderr


def _files(folder):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _,
            fs in os.walk(folder) for f in fs}


def test_cached_training_step_trains_the_loaded_weights(tmp_path):
    cache = tmp_path / "graphs"
    first, compiles, in_child = _train(tmp_path, 0, cache)
    # two graphs, each compiled once, by a forked child; the process itself loaded them
    assert compiles == 2 and in_child
    graphs = _files(cache)
    assert len(graphs) == 2 and all(name.endswith("compile_cache_#.mindir") for name in graphs)
    other_weights, compiles, in_child = _train(tmp_path, 1, cache)
    assert _files(cache) == graphs and compiles == 0 and not in_child  # loaded, not compiled again
    assert other_weights == _train(tmp_path, 1, "off")[0] != first


def test_compile_in_child_runs_in_a_copy_of_this_process(tmp_path):
    marks = []

    def compile():
        marks.append(os.getpid())
        (tmp_path / "pid").write_text(str(os.getpid()))

    assert compile_child.compile_in_child(compile)
    assert marks == [] and int((tmp_path / "pid").read_text()) != os.getpid()

    def fails():
        raise RuntimeError("no graph")

    assert not compile_child.compile_in_child(fails)  # the caller then compiles, and meets the error itself


UNET_STEP = """
import json, logging, sys
import mindspore as ms, numpy as np
logging.basicConfig(level=logging.INFO)
from tuneavideo_ms import runtime, training
from tuneavideo_ms.models import UNet3DConditionModel
from tuneavideo_ms.optim import AdamW
from tuneavideo_ms.tiny import UNET_CONFIG
runtime.setup("CPU", "graph")
ms.set_seed(0)
np.random.seed(0)
unet = UNet3DConditionModel(**UNET_CONFIG)
params = training.trainable_parameters(unet, ["attn1.to_q", "attn2.to_q", "attn_temp"])
step = training.TrainStep(unet, params, AdamW(params), "epsilon", 0.18, 1.0)
rng = np.random.default_rng(0)
t = lambda *s: ms.Tensor(rng.standard_normal(s).astype(np.float32))
alpha = lambda a: ms.Tensor(np.full((1, 1, 1, 1, 1, 1), a, np.float32))
inputs = (t(1, 4, 3, 8, 8), t(1, 4, 3, 8, 8), t(1, 1, 4, 3, 8, 8), t(1, 1, 4, 3, 8, 8), alpha(0.6),
alpha(0.8),
          ms.Tensor([[500.0]]), t(1, 5, 32), ms.Tensor(1.0), ms.Tensor(1e-3))
losses = [float(step(*inputs)[0].asnumpy()) for _ in range(3)]
print("RESULT", json.dumps([losses, [p.asnumpy().ravel().tolist() for p in params]]))
"""


def test_unet_step_with_shared_graphs_equals_one_without(tmp_path):
    """A cold cached compile runs in a child whose transformers of one
    configuration share a graph (compile_child.share_graphs; the tiny UNet's
    share it across resolutions); the cache off compiles each instance."""
    script = tmp_path / "unet_step.py"
    script.write_text(UNET_STEP)
    runs = []
    for cache in (tmp_path / "graphs", "off"):
        env = dict(os.environ, PYTHONPATH=REPO, TUNEAVIDEO_COMPILE_CACHE=str(cache))
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                             check=True)
        runs.append((json.loads(out.stdout.split("RESULT", 1)[1]), out.stderr))
    (shared, log), (separate, _) = runs
    # 32 and 64 channels: 4 and 3 resolutions
    assert "compiled in a child process" in log and "16 cells share 2 graphs" in log
    assert shared == separate and shared[0][0] != shared[0][2]  # the same kernels: equal bit for bit


def test_an_incomplete_stored_graph_is_removed(tmp_path):
    folder = tmp_path / "graph"
    folder.mkdir()
    (folder / "compile_cache_#.mindir").write_bytes(b"")  # a full disk
    assert not holds_graph(str(folder)) and not folder.exists()
    folder.mkdir()
    assert not holds_graph(str(folder)) and not folder.exists()
    folder.mkdir()
    (folder / "compile_cache_#.mindir").write_bytes(b"graph")
    assert holds_graph(str(folder))


def test_a_compile_child_dies_with_its_parent(tmp_path):
    """The parent is killed while its child compiles: the child must not run on as an orphan."""
    script = tmp_path / "parent.py"
    script.write_text(f"""
import os, sys, time
sys.path.insert(0, {REPO!r})
from tuneavideo_ms.runtime import compile_child
def compile():
    with open({str(tmp_path / 'child.pid')!r}, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
compile_child.compile_in_child(compile)
""")
    parent = subprocess.Popen([sys.executable, str(script)])
    pid_file = tmp_path / "child.pid"
    for _ in range(600):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{child}/stat") as f:
            if f.read().split()[2] == "Z":  # exited, waiting to be reaped by init
                return
        time.sleep(0.05)
    os.kill(child, 9)
    raise AssertionError("the compile child outlived its parent")


def test_the_compile_child_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("TUNEAVIDEO_COMPILE_CHILD", "off")
    assert not compile_child.available()
    assert not compile_child.compile_and_store(None, lambda: pytest.fail("compiled in a child"))


CONSTANTS = """
import json, logging, sys
import mindspore as ms, numpy as np
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {tests!r})
from test_graph_cache import Toy
from tuneavideo_ms import runtime
from tuneavideo_ms.runtime.compile_cache import CachedCompile
runtime.setup("CPU", "graph")

class CachedToy(CachedCompile, Toy):
    pass

x, t, context = (ms.Tensor(np.ones(s, np.float32)) for s in ((1, 4, 2, 2, 2), (1,), (1, 3, 5)))
print("RESULT", json.dumps([float(CachedToy(scale=float(s))(x, t, context).asnumpy()[0, 0, 0, 0, 0])
                            for s in sys.argv[1:]]))
"""


def test_a_graph_is_loaded_for_its_own_constants_in_any_order(tmp_path):
    """Graphs of one cell class and input shapes, other constants: each run gets its own, whatever order a
    process compiles them in (MindSpore alone numbers them by compile order and would swap them)."""
    script = tmp_path / "constants.py"
    script.write_text(CONSTANTS.format(tests=os.path.join(REPO, "tests")))
    env = dict(os.environ, PYTHONPATH=REPO, GLOG_v="2")

    def run(*scales, cache=tmp_path / "graphs"):
        out = subprocess.run([sys.executable, str(script), *map(str, scales)], capture_output=True, text=True,
                             env=dict(env, TUNEAVIDEO_COMPILE_CACHE=str(cache)), check=True)
        loads = out.stderr.count("loading the graph, compiled by an earlier run")
        return json.loads(out.stdout.split("RESULT", 1)[1]), loads, out.stderr.count(
            "Execute all the compilation actions")

    right = dict(zip((2, 3, 5, 7), run(2, 3, 5, 7, cache="off")[0]))
    assert len(set(right.values())) == 4
    assert run(2, 3, 5) == ([right[2], right[3], right[5]], 0, 3)
    assert run(5, 7, 2) == ([right[5], right[7], right[2]], 2, 1)  # loaded 5 and 2, compiled 7


EDIT = """
import logging, sys
import mindspore as ms, numpy as np
logging.basicConfig(level=logging.INFO)
from tuneavideo_ms import runtime
from tuneavideo_ms.data import read_video
from tuneavideo_ms.editing import invert_clip
from tuneavideo_ms.pipelines import TuneAVideoPipeline
runtime.setup("CPU", "graph")
model, clip, out, order = sys.argv[1:]
pipe = TuneAVideoPipeline.from_pretrained(model)
if order == "decoder first":
    pipe.decode_latents(np.zeros((1, 4, 2, 8, 8), np.float32))
latents = pipe.encode_video(read_video(clip, 2, 64, 64)[None])
noise = invert_clip(pipe, latents, 2)
videos = [pipe(prompt, latents=noise, video_length=2, height=64, width=64, num_inference_steps=2,
               guidance_scale=7.5).videos for prompt in ("a man is skiing", "a panda is skiing")]
np.save(out, np.stack(videos))
"""


def test_a_second_edit_loads_every_graph_and_compiles_none(tmp_path):
    """Inversion and two prompts, run twice (the second starting with another graph): the second run
    loads all five graphs, compiles none, and gives the same videos bit for bit."""
    from conftest import BUNDLED_CLIP
    from tuneavideo_ms import tiny
    model = tiny.build_tiny_sd(str(tmp_path / "tiny-sd"))
    script = tmp_path / "edit.py"
    script.write_text(EDIT)
    env = dict(os.environ, PYTHONPATH=REPO, TUNEAVIDEO_COMPILE_CACHE=str(tmp_path / "graphs"), GLOG_v="2")
    runs = []
    for i, order in enumerate(("as the editor", "decoder first")):
        out = subprocess.run([sys.executable, str(script), model, BUNDLED_CLIP, str(tmp_path / f"{i}.npy"),
                              order], env=env, capture_output=True, text=True, check=True)
        runs.append((out.stderr.count(", compiled by an earlier run"),
                     out.stderr.count("Execute all the compilation actions")))
    # the VAE encoder and decoder, the text encoder, the denoiser and the guided denoiser
    assert runs == [(0, 5), (5, 0)]
    assert np.array_equal(np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy"))
