"""Build hook for the optional compiled kernel; the metadata lives in pyproject.toml.

``tinyzip.model._cm_kernel`` speeds up the context-mixing predictor (model/_cm_kernel.c).
It is optional: without a C compiler the install still succeeds and the predictor runs
its numpy reference code, with identical results. No -march flags: the kernel is integer
only, and a wheel must run on any machine of its architecture.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tinyzip.model._cm_kernel",
            ["model/_cm_kernel.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
