"""State of running profiles, safe against concurrent vpnjail commands.

One JSON record per running profile, written atomically; a lock file per
profile (and one for the link pool) serialises commands touching the same
profile, while different profiles proceed in parallel.
"""

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator


def _unlink_if_free(path: str) -> bool:
    """Delete a lock file only while holding it, so no holder loses it."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.remove(path)
        return True


def _same_file(handle, path: str) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class State:
    def __init__(self, directory: str):
        self.directory = directory
        self.records_dir = os.path.join(directory, "profiles")
        self.locks_dir = os.path.join(directory, "locks")
        self.owned_dir = os.path.join(directory, "owned")

    def _ensure(self) -> None:
        os.makedirs(self.records_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.locks_dir, mode=0o700, exist_ok=True)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the lock called *name* (a profile, or ``pool``)."""
        path = os.path.join(self.locks_dir, f"{name}.lock")
        while True:
            self._ensure()  # prune() may also have removed the directories
            handle = open(path, "a")
            fcntl.flock(handle, fcntl.LOCK_EX)
            # prune() may have removed the file between open and flock; a
            # lock on a deleted file excludes nobody, so take it again.
            if _same_file(handle, path):
                break
            handle.close()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def save(self, name: str, record: dict) -> None:
        self._ensure()
        path = os.path.join(self.records_dir, f"{name}.json")
        with tempfile.NamedTemporaryFile(
            "w", dir=self.records_dir, prefix=f".{name}.", delete=False
        ) as out:
            json.dump(record, out, indent=2)
        os.replace(out.name, path)

    def load(self, name: str) -> dict | None:
        try:
            with open(os.path.join(self.records_dir, f"{name}.json")) as src:
                return json.load(src)
        except FileNotFoundError:
            return None

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.records_dir, f"{name}.json"))

    def prune(self) -> list[str]:
        """Remove lock files nobody holds, failed-start logs of profiles not
        running, and the state directory itself once empty."""
        removed = []
        running = set(self.names()) | self.owned()
        if os.path.isdir(self.locks_dir):
            for entry in sorted(os.listdir(self.locks_dir)):
                if entry[: -len(".lock")] in running:
                    continue
                path = os.path.join(self.locks_dir, entry)
                if _unlink_if_free(path):
                    removed.append(path)
        if os.path.isdir(self.directory):
            for entry in sorted(os.listdir(self.directory)):
                if entry.endswith(".failed.log") and entry[:-11] not in running:
                    os.remove(os.path.join(self.directory, entry))
                    removed.append(os.path.join(self.directory, entry))
        for folder in (
            self.locks_dir,
            self.records_dir,
            self.owned_dir,
            self.directory,
        ):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        return removed

    # Ownership: a profile is owned from just before its first object is
    # created until its last one is removed, so `gc` touches nothing else.

    def own(self, name: str) -> None:
        os.makedirs(self.owned_dir, mode=0o700, exist_ok=True)
        with open(os.path.join(self.owned_dir, name), "w"):
            pass

    def disown(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.owned_dir, name))

    def owned(self) -> set[str]:
        if not os.path.isdir(self.owned_dir):
            return set()
        return set(os.listdir(self.owned_dir))

    def names(self) -> list[str]:
        if not os.path.isdir(self.records_dir):
            return []
        return sorted(
            entry[: -len(".json")]
            for entry in os.listdir(self.records_dir)
            if entry.endswith(".json")
        )
