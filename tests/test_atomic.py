"""Atomic writes: what dead writers leave is cleaned up, and outputs get the umask's permissions."""
import os
import stat
import subprocess
import sys

from tuneavideo_ms.atomic import atomic_dir, atomic_file


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_dead_writers_leftovers_are_removed_and_a_live_ones_kept(tmp_path):
    with atomic_file(tmp_path / "first.txt") as tmp:
        open(tmp, "w").close()
        # .first.txt.<host>-<pid>-<r>.tmp
        host_part = os.path.basename(tmp)[len(".first.txt."):].rsplit("-", 2)[0]
    dead, live = _dead_pid(), os.getpid()
    (tmp_path / f".checkpoint-40.{host_part}-{dead}-abc.tmp").mkdir()
    (tmp_path / f".unet.{host_part}-{dead}-xyz.old").mkdir()
    (tmp_path / f".w.ckpt.{host_part}-{dead}-q1.tmp.ckpt").write_text("half")
    (tmp_path / f".unet.{host_part}-{live}-abc.tmp").mkdir()  # a writer still at work
    (tmp_path / f".unet.otherhost-{dead}-abc.tmp").mkdir()  # another machine's, on a shared disk
    (tmp_path / ".hidden").write_text("not ours")
    with atomic_dir(tmp_path / "out") as tmp:
        open(os.path.join(tmp, "x"), "w").close()
    assert sorted(os.listdir(tmp_path)) == sorted([
        ".hidden", f".unet.{host_part}-{live}-abc.tmp", f".unet.otherhost-{dead}-abc.tmp", "first.txt",
        "out"])


def test_outputs_take_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "f.txt") as tmp:
            open(tmp, "w").close()
        with atomic_dir(tmp_path / "d"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f.txt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o755
