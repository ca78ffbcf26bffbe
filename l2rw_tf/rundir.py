"""The run directory: refusing one that cannot hold a run, creating it, and holding it.

A run writes into one directory (train.py lists its files); rerunning the same command resumes
it. Why these checks come before any work: a run that fails after minutes of loading data, or
halfway through creating its directory, or that interleaves its checkpoints with a second
process on the same directory, costs the user far more than a one-line refusal at once. Each
refusal is a `UsageError` that says what to do. Importable without TensorFlow.
"""
import contextlib
import os
import tempfile

from l2rw_tf import config as run_config
from l2rw_tf.config import UsageError

LOCK_NAME = "running.pid"
# Room left under a run directory for the longest path written in it (ckpt/ckpt-<step>.data-...,
# tb/events.out.tfevents.<time>.<host>.<pid>...).
RUN_FILES_LENGTH = 160


def check_run_dir(run_dir, config):
    """Refuses, before any work, a run directory that cannot hold the run of `config`: one
    holding another run or other files, a file, or a place that cannot be written. Creates
    nothing. Returns the path of its flags.json."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UsageError(f"--logdir={run_dir} is a file, not a directory; choose another --logdir")
    flags_path = os.path.join(run_dir, run_config.FLAGS_JSON)
    if os.path.exists(flags_path):
        try:
            saved = run_config.read_record(run_dir)
        except (OSError, ValueError) as e:
            raise UsageError(f"{flags_path} cannot be read ({type(e).__name__}); use a new "
                             f"--logdir") from None
        changed = run_config.resume_changes(saved, config)
        if changed:
            diff = ", ".join(f"--{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise UsageError(f"{run_dir} holds a different run ({diff}); use a new --logdir")
    elif os.path.isdir(run_dir) and set(os.listdir(run_dir)) - {LOCK_NAME}:
        raise UsageError(f"{run_dir} exists and is not a run directory; use a new --logdir")
    check_writable(run_dir)
    return flags_path


def check_writable(path, flag="--logdir"):
    """Refuses a directory `path` that is a file or cannot be created or written: the nearest
    existing ancestor must take a new directory (tried, then removed: os.access says yes to
    root on read-only file systems such as /sys). Creates nothing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag}={path} is a file, not a directory; choose another {flag}")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"cannot create {flag}={path}: {parent} is a file, not a "
                         f"directory; choose another {flag}")
    check_path_length(path, parent, flag)
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".l2rw_probe_"))
    except OSError as e:
        raise UsageError(f"cannot create {flag}={path}: {parent} is not a writable "
                         f"directory ({e.strerror}); choose another {flag}") from None


def check_path_length(path, parent, flag):
    """Refuses a directory `path` whose name, or a file in it, would be too long for the file
    system of its existing ancestor `parent` (creating it would fail halfway)."""
    try:
        name_max, path_max = os.pathconf(parent, "PC_NAME_MAX"), os.pathconf(parent, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    full = os.path.abspath(path)
    longest = max(full.split(os.sep), key=lambda part: len(os.fsencode(part)))
    if len(os.fsencode(longest)) > name_max:
        raise UsageError(f"{flag} has a path component of {len(os.fsencode(longest))} bytes, more "
                         f"than the {name_max} its file system allows; choose a shorter {flag}")
    if len(os.fsencode(full)) + RUN_FILES_LENGTH > path_max:
        raise UsageError(f"{flag} is {len(os.fsencode(full))} bytes long: the files of a run in "
                         f"it would exceed the file system's {path_max}-byte paths; choose a "
                         f"shorter {flag}")


def prepare_run_dir(run_dir, config):
    """Creates the run directory, or checks that an existing one holds the run of `config`;
    returns the path of its flags.json."""
    flags_path = check_run_dir(run_dir, config)
    missing, parent = [], os.path.abspath(run_dir)
    while not os.path.exists(parent):  # the directories makedirs creates, innermost first
        missing.append(parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        for created in missing:  # nothing left behind of a directory that could not be made
            with contextlib.suppress(OSError):
                os.rmdir(created)
        raise UsageError(f"cannot create --logdir={run_dir} ({e.strerror}); choose another "
                         f"--logdir") from None
    return flags_path


# ---------------------------------------------------------------------------------------------
# The lock: one process trains a run directory at a time.

def check_lock(run_dir):
    """Refuses at once a run directory another live process is training."""
    path = os.path.join(run_dir, LOCK_NAME)
    try:
        with open(path) as fh:
            text = fh.read()
    except (OSError, ValueError):  # no lock (or an unreadable one, taken over)
        return
    pid = lock_holder(text)
    if pid is not None:  # (a UsageError is a ValueError: raised outside the try)
        raise UsageError(in_use_message(run_dir, pid))


@contextlib.contextmanager
def run_dir_lock(run_dir):
    """Holds `run_dir` for this process: a second process on the same run directory would
    interleave its checkpoints with ours. A lock left by a killed process is taken over."""
    path = os.path.join(run_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        with open(path) as fh:
            text = fh.read()
        pid = lock_holder(text)
        if pid is not None:
            raise UsageError(in_use_message(run_dir, pid)) from None
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    start = process_start_time(os.getpid())
    os.write(fd, (f"{os.getpid()} {start}" if start else str(os.getpid())).encode())
    os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def lock_holder(text):
    """The pid of the live process that wrote a lock's `text` ("<pid> <start time>", or
    "<pid>" alone where the start time is unknown, as in locks of earlier versions); None when
    it names no other live process, or a process that started after the lock's writer (its pid
    reused: the writer was killed)."""
    parts = text.split()
    if not parts or not parts[0].isdigit():
        return None
    pid = int(parts[0])
    if pid == os.getpid() or not process_alive(pid):
        return None
    start = process_start_time(pid)
    if len(parts) > 1 and start is not None and start != parts[1]:
        return None
    return pid


def in_use_message(run_dir, pid):
    path = os.path.join(run_dir, LOCK_NAME)
    return (f"{run_dir} is in use by process {pid} (training it now); wait for that run or stop "
            f"it, then rerun; if process {pid} is not training it (the lock outlived its run), "
            f"remove {path}")


def process_start_time(pid):
    """When process `pid` started, as a string (Linux: clock ticks since boot, field 22 of
    /proc/<pid>/stat), so a lock names its writer and not a later process given the same pid;
    None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
