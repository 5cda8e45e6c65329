"""How much memory a program may still take, and what bounds it: a GPU's own limit, or on the host the
smallest of its available memory, the memory cgroup the process runs in (a container, a SLURM job;
cgroup v1 or v2, with every ancestor's limit) and its address-space limit (`ulimit -v`). Read from
/proc, /sys/fs/cgroup and `resource`, before anything compiles."""

from __future__ import annotations

import dataclasses
import resource
from pathlib import Path

import jax

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc")
UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a huge page-rounded number


@dataclasses.dataclass(frozen=True)
class Headroom:
    """Bytes still available, and what sets the bound, in words."""

    bytes: int
    source: str


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value < UNLIMITED else None


def host_available(proc: Path | None = None) -> Headroom | None:
    try:
        for line in ((proc or PROC) / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return Headroom(int(line.split()[1]) * 1024, "the host's available memory")
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_headroom(root: Path | None = None, proc: Path | None = None) -> Headroom | None:
    """The tightest memory cgroup this process is in: for its cgroup and each ancestor that sets a limit,
    the limit less what the cgroup uses now."""
    root = root or CGROUP_ROOT
    try:
        lines = ((proc or PROC) / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    found: list[Headroom] = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "" and (root / "cgroup.controllers").is_file():  # v2: "0::/path"
            base, limit_file, usage_file, kind = root, "memory.max", "memory.current", "v2"
        elif "memory" in controllers.split(","):  # v1: "4:memory:/path"
            base, limit_file, usage_file, kind = root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "v1"
        else:
            continue
        parts = [p for p in path.strip("/").split("/") if p]
        # the path as /proc names it may not exist below the mount (a container's own namespace): then
        # the mount's root is the process's cgroup, and its ancestors are out of sight
        for depth in range(len(parts), -1, -1):
            folder = base.joinpath(*parts[:depth])
            limit = _read_int(folder / limit_file)
            if limit is None:
                continue
            used = _read_int(folder / usage_file) or 0
            found.append(Headroom(max(0, limit - used), f"the memory cgroup {kind} {folder} (limit "
                                                        f"{gib(limit)}, {gib(used)} in use)"))
    return min(found, key=lambda h: h.bytes) if found else None


def address_space_headroom(proc: Path | None = None) -> Headroom | None:
    """The address-space limit (`ulimit -v`, RLIMIT_AS) less the address space the process holds now."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    held = 0
    try:
        for line in ((proc or PROC) / "self" / "status").read_text().splitlines():
            if line.startswith("VmSize:"):
                held = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return Headroom(max(0, soft - held), f"the address-space limit (ulimit -v {soft // 1024}, {gib(held)} held)")


def host_headroom() -> Headroom | None:
    """The smallest of the host's available memory, the cgroup's headroom and the address-space headroom."""
    bounds = [h for h in (host_available(), cgroup_headroom(), address_space_headroom()) if h is not None]
    return min(bounds, key=lambda h: h.bytes) if bounds else None


def device_headroom() -> Headroom | None:
    """Bytes a program may use on this process's devices, and what bounds them; None if unknown."""
    devices = jax.local_devices()
    stats = devices[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return Headroom(int(stats["bytes_limit"]) * len(devices), f"the memory of {len(devices)} "
                                                                  f"{devices[0].platform} device(s)")
    return host_headroom()


def nbytes(tree: object) -> int:
    """The bytes of a pytree of arrays or shapes of them (a typed PRNG key holds 8)."""
    return sum(x.size * (8 if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x.dtype.itemsize)
               for x in jax.tree.leaves(tree))


def size(n: int) -> str:
    """Bytes in MiB below a GiB, else in GiB."""
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else gib(n)


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
