"""Write files and folders under a temporary name and rename them into place,
so an interrupted run never leaves half-written output. Temporary names carry
the writer's host and process id: what a dead writer on this host left behind
is removed by the next write in the same folder. Outputs get the permissions
the umask gives (as a plain open or mkdir would), not the private ones of
temporary files."""
import contextlib
import os
import re
import shutil
import socket
import tempfile

# .<name>.<host>-<pid>-<random>.tmp[<ext>] or .old
_TEMPORARY = re.compile(r"^\..+\.(?P<host>[^.]+)-(?P<pid>\d+)-[^.]+\.(tmp|old)")


def _host():
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def _prefix(path):
    return f".{os.path.basename(path)}.{_host()}-{os.getpid()}-"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(folder):
    """Removes the temporary files and folders of dead writers of this host in `folder`."""
    host = _host()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = _TEMPORARY.match(name)
        if m and m.group("host") == host and not _alive(int(m.group("pid"))):
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)


def _umask():
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path):
    """Yields a temporary path beside `path`; renamed to `path` on success.
    The temporary name keeps the extension, which some writers go by."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale(folder)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp" + os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path, overwrite=True):
    """Yields a temporary folder beside `path`; it replaces `path` on success."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite to replace it")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale(parent)
    tmp = tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=_prefix(path), suffix=".old", dir=parent)
            os.replace(path, os.path.join(old, "x"))
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
