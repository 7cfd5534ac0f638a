"""Build hook for the optional compiled kernels: the fused MaxSim kernel (metaembed/native/maxsim.c)
and the apq2 encoder (metaembed/native/apq.c).

Everything else is declared in pyproject.toml. Both extensions are optional: where no C
compiler is available the install still succeeds, scoring uses the BLAS path and apq2 its torch
encoder.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "metaembed.native._maxsim",
            ["metaembed/native/maxsim.c"],
            depends=["metaembed/native/maxsim_tile.h", "metaembed/native/maxsim_amx.h", "metaembed/native/topk.h"],
            # -fno-wrapv: Python's own CFLAGS carry -fwrapv, which stops GCC from keeping the
            # micro-kernel's addressing in registers and halves its speed (58 vs 105 GFLOP/s).
            extra_compile_args=["-O3", "-fno-wrapv", "-std=c11"],
            optional=True,
        ),
        Extension(
            "metaembed.native._apq",
            ["metaembed/native/apq.c"],
            extra_compile_args=["-O3", "-fno-wrapv", "-std=c11"],
            optional=True,
        ),
    ]
)
