"""A login's argon2 memory goes back to the operating system (process_memory.py)."""

from __future__ import annotations

import platform
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

import security  # noqa: F401 - importing it fixes the threshold, as the service does

MIB = 1024 * 1024
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc on Linux only",
)


def resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_hashing_passwords_does_not_grow_the_process() -> None:
    # The production cost (security.py): 19 MiB a hash, which glibc used to keep once per
    # thread that had hashed, from the second hash on.
    hasher = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=19_456, parallelism=1),))
    before = resident_bytes()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(3):
            hasher.hash("correct horse battery staple")
            list(pool.map(hasher.hash, ["one password", "another password"]))
    grown = resident_bytes() - before
    assert grown < 8 * MIB, f"the process kept {grown / MIB:.1f} MiB after hashing"
