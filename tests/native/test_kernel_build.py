"""The built kernel's micro tiles keep their accumulators in registers (checked on the machine code).

GCC once kept the AVX2 tile's accumulator array in memory and stored all twelve
accumulators to the stack on every step of the inner loop, which made the kernel
three times slower without changing a single score. Timing cannot be asserted in a
unit test, so this reads the compiled extension instead: no tile function may store
a vector register to a stack address (rsp- or rbp-relative).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from metaembed import native

TILE_FUNCTIONS = ("tile_wide_avx2", "tile_narrow_avx2", "tile_wide_avx512", "tile_narrow_avx512")
VECTOR_STORE_TO_STACK = re.compile(r"\bvmov\w*\s+%[xyz]mm\d+,\s*[-\w]*\(%r[sb]p[,)]")
FMA = re.compile(r"\bvfmadd\d+ps\b")


def disassembly_by_function(path: str) -> dict[str, list[str]]:
    """objdump's AT&T disassembly of ``path``, as instruction lines under each function label."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True,
                          check=True).stdout
    functions: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        label = re.match(r"^[0-9a-f]+ <([^>]+)>:$", line)
        if label:
            current = functions.setdefault(label.group(1), [])
        elif current is not None and line.strip():
            current.append(line)
    return functions


@pytest.fixture(scope="module")
def tiles() -> dict[str, list[str]]:
    if native._maxsim is None:
        pytest.skip("the compiled MaxSim kernel is not built here")
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed, so the machine code cannot be read")
    functions = disassembly_by_function(native._maxsim.__file__)
    # GCC may emit a specialised clone under a suffixed name (``tile_wide_avx2.constprop.0``).
    found: dict[str, list[str]] = {}
    for label, body in functions.items():
        base = label.split(".")[0]
        if base in TILE_FUNCTIONS:
            found.setdefault(base, []).extend(body)
    if not found:
        pytest.skip("the extension carries no symbol table (stripped), so its tile functions cannot be found")
    return found


@pytest.mark.parametrize("name", TILE_FUNCTIONS)
def test_tile_inner_loops_store_no_vector_to_the_stack(tiles: dict[str, list[str]], name: str) -> None:
    assert name in tiles, f"{name} is missing from the built extension"
    body = tiles[name]
    assert any(FMA.search(line) for line in body), f"{name} holds no FMA: not the tile this test means"
    spills = [line.strip() for line in body if VECTOR_STORE_TO_STACK.search(line)]
    assert not spills, f"{name} stores vector registers to the stack ({len(spills)}x), e.g. {spills[:3]}"


def test_the_pattern_recognises_a_spill() -> None:
    assert VECTOR_STORE_TO_STACK.search("6138:\tvmovaps %ymm5,-0x78(%rsp)")
    assert VECTOR_STORE_TO_STACK.search("60b3:\tvmovups %zmm3,0xc8(%rbp)")
    assert not VECTOR_STORE_TO_STACK.search("43cc:\tvmovups %ymm0,(%r11)")
    assert not VECTOR_STORE_TO_STACK.search("60a7:\tvmovaps -0x78(%rsp),%ymm5")  # a reload is not a store


def test_the_amx_path_multiplies_on_the_tile_unit() -> None:
    # The AMX path is compiled on every x86-64 build (it runs only where the CPU has tiles), so its
    # tile products must be in the machine code wherever the kernel is: 5 per query tile with a float16
    # lo part, 3 without, for 1-4 query tiles (GCC may keep them in helpers or inline them).
    import platform

    if native._maxsim is None or shutil.which("objdump") is None or platform.machine() != "x86_64":
        pytest.skip("no built x86-64 kernel or no objdump here")
    functions = disassembly_by_function(native._maxsim.__file__)
    products = sum("tdpbf16ps" in line for label, body in functions.items() if "amx" in label for line in body)
    if not functions:
        pytest.skip("the extension carries no symbol table (stripped)")
    assert products >= (5 + 3) * (1 + 2 + 3 + 4), f"the AMX path holds {products} tile products"
