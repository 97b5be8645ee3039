"""System shared memory (Triton's extension): regions of POSIX shared memory objects
that a client on the same host registers by name, then names in an inference request
instead of sending a tensor's bytes; outputs can be written into them the same way.

A region is `byte_size` bytes at `offset` of the object `key` (shm_open's name, e.g.
"/input0", which Linux keeps as /dev/shm/input0). The server maps it when it is
registered. Reads copy out of the region and writes copy into it, so a tensor never
aliases memory the client may change or shrink while a model runs; before each access
the object's current size is checked, so a client that truncates it gets an error
rather than taking the server down (touching a mapping past the end of its file is a
SIGBUS).

Unregistering drops the registry's reference: a request that already holds the region
finishes with it, and the mapping goes with the last reference (as Triton unregisters
a region only once its in-flight requests are done).
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError

SHM_DIR = Path("/dev/shm")  # where Linux's shm_open keeps its objects
NAME_MAX = 255


@dataclass(frozen=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


def shm_path(key: str) -> Path:
    """The file of POSIX shared memory object `key`, named as shm_open names it: leading
    slashes dropped, then one path component."""
    name = key.lstrip("/")
    if not name or "/" in name or name in (".", "..") or "\0" in name or len(name) > NAME_MAX:
        raise InvalidArgumentError(
            f"shared memory key {key[:300]!r}: expected a POSIX shared memory object name "
            "such as '/input0' (one name of at most 255 characters after the leading '/')"
        )
    return SHM_DIR / name


class Region:
    """One registered region, mapped read-write."""

    def __init__(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.status = RegionStatus(name, key, offset, byte_size)
        path = shm_path(key)
        if offset < 0 or byte_size <= 0:
            raise InvalidArgumentError(
                f"failed to register shared memory region {name!r}: expected offset >= 0 "
                f"and byte_size > 0, got offset {offset}, byte_size {byte_size}"
            )
        try:
            # O_NOFOLLOW as shm_open: a link planted under /dev/shm leads nowhere.
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            raise InvalidArgumentError(
                f"Unable to open shared memory region: {key!r}: {error.strerror}"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgumentError(f"{key!r} is not a shared memory object")
            if offset + byte_size > info.st_size:
                raise InvalidArgumentError(
                    f"failed to register shared memory region {name!r}: offset {offset} + "
                    f"byte_size {byte_size} runs past the end of {key!r} "
                    f"({info.st_size} bytes)"
                )
            # mmap's offset must be a multiple of the allocation granularity.
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            self._map = mmap.mmap(fd, byte_size + offset - start, offset=start)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._base = offset - start
        self._end_in_file = offset + byte_size
        weakref.finalize(self, os.close, fd)

    def _check(self, offset: int, size: int, what: str) -> int:
        """The mapping's index of the region's byte `offset`, once the region holds
        `size` bytes there and the object still covers the region."""
        name, byte_size = self.status.name, self.status.byte_size
        if offset + size > byte_size:
            raise InvalidArgumentError(
                f"{what}: offset {offset} + {size} bytes runs past the end of shared memory "
                f"region {name!r} ({byte_size} bytes)"
            )
        if os.fstat(self._fd).st_size < self._end_in_file:
            raise InvalidArgumentError(
                f"{what}: shared memory region {name!r} was registered over bytes "
                f"{self.status.offset}..{self._end_in_file} of {self.status.key!r}, which "
                "has been truncated since"
            )
        return self._base + offset

    def read(self, offset: int, size: int, what: str) -> bytes:
        start = self._check(offset, size, what)
        return self._map[start : start + size]

    def write(self, offset: int, data: bytes | np.ndarray, what: str) -> None:
        if isinstance(data, np.ndarray):  # its bytes, without a copy
            data = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
        start = self._check(offset, len(data), what)
        self._map[start : start + len(data)] = data


@dataclass(frozen=True)
class Slot:
    """Where one tensor lies: `byte_size` bytes at `offset` of a region."""

    region: Region
    offset: int
    byte_size: int
    what: str  # "input 'x'", for messages

    def read(self) -> bytes:
        return self.region.read(self.offset, self.byte_size, self.what)

    def write(self, data: bytes | np.ndarray) -> None:
        size = data.nbytes if isinstance(data, np.ndarray) else len(data)
        if size > self.byte_size:
            # Triton's wording first, then what we hold.
            raise InvalidArgumentError(
                f"shared memory size specified with the request for {self.what} "
                f"({self.byte_size} bytes) should be at least {size} bytes to hold the results"
            )
        self.region.write(self.offset, data, self.what)


class SharedMemoryRegistry:
    """The registered regions by name. Lookups take no lock (a dict read is atomic)."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidArgumentError(
                "'region name' is necessary to register system shared memory region"
            )
        with self._lock:
            if name in self._regions:
                raise AlreadyExistsError(
                    f"shared memory region {name!r} already in manager: unregister it first"
                )
            self._regions[name] = Region(name, key, offset, byte_size)

    def unregister(self, name: str) -> None:
        """Forget region `name` ("": every region); an unknown name is no error, as in
        Triton."""
        with self._lock:
            if name:
                self._regions.pop(name, None)
            else:
                self._regions.clear()

    def status(self, name: str = "") -> list[RegionStatus]:
        if not name:
            return [r.status for _, r in sorted(self._regions.items())]
        region = self._regions.get(name)
        if region is None:
            raise NotFoundError(f"Unable to find system shared memory region: {name!r}")
        return [region.status]

    def slot(self, name: str, offset: int, byte_size: int | None, what: str) -> Slot:
        """The tensor `what` at `offset` of region `name`, checked against its bounds
        (`byte_size` None: the request did not say)."""
        region = self._regions.get(name)
        if region is None:
            raise InvalidArgumentError(
                f"Unable to find shared memory region: {name[:300]!r} ({what}); registered: "
                f"{sorted(self._regions)[:20]}"
            )
        if byte_size is None:
            raise InvalidArgumentError(
                f"{what}: shared memory region {name!r} without 'shared_memory_byte_size' "
                "(the tensor's size in bytes)"
            )
        size = region.status.byte_size
        if offset < 0 or byte_size < 0:
            raise InvalidArgumentError(
                f"{what}: expected shared_memory_offset and shared_memory_byte_size >= 0, "
                f"got {offset} and {byte_size}"
            )
        if offset + byte_size > size:
            raise InvalidArgumentError(
                f"Invalid offset + byte size for shared memory region: {name!r} ({what}): "
                f"offset {offset} + byte_size {byte_size} runs past its end ({size} bytes)"
            )
        return Slot(region, offset, byte_size, what)
