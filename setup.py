"""Build hook for the optional compiled kernels; the metadata lives in pyproject.toml.

``tinyzip.model._cm_kernel`` speeds up the context-mixing predictor (model/_cm_kernel.c),
``tinyzip.model._engine_kernel`` the transformer's integer engine (model/_engine_kernel.c).
Both are optional: without a C compiler the install still succeeds and the predictors run
their numpy reference code, with identical results. No -march flags: the kernels are
integer only, and a wheel must run on any machine of its architecture (the engine picks
its AVX2 code at run time, per function, where the CPU has it; cm's per-bit functions are
built once more per x86-64 level, and the loader picks the one the CPU runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tinyzip.model._cm_kernel",
            ["model/_cm_kernel.c"],
            depends=["model/_engine_step.h"],
            optional=True,
            extra_compile_args=["-O3"],
        ),
        Extension(
            "tinyzip.model._engine_kernel",
            ["model/_engine_kernel.c"],
            depends=["model/_engine_step.h"],
            optional=True,
            extra_compile_args=["-O3"],
        ),
    ]
)
