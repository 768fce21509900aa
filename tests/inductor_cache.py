"""One inductor cache directory per CPU capability, for the tests that compile with inductor on the CPU.

Inductor's on-disk cache (default /tmp/torchinductor_<user>, shared by every process of the user) does not
separate code compiled under ATEN_CPU_CAPABILITY=avx2 (how an AVX2-only machine is emulated) from code compiled for
the machine's own AVX-512: measured with torch 2.13, a compiled rms_norm loaded from the other capability's entry
gave results off by ~3-7 (and, the other way round, glibc's "malloc(): unaligned tcache chunk detected" at exit).
A directory per capability keeps each kind's cache (and its speed-up of later runs) without mixing them.

    from tests.inductor_cache import inductor_cache_per_capability  # noqa: F401  (an autouse fixture)
"""

import os
import tempfile

import pytest

from kernels._common import cpu_capability


@pytest.fixture(autouse=True, scope="module")
def inductor_cache_per_capability():
    default = os.path.join(tempfile.gettempdir(), f"torchinductor_uid{os.getuid()}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", f"{default}_{cpu_capability().lower()}")
        yield
