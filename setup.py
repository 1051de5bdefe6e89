# The C extension, write()'s fast path (src/shmring/_fastpath.c); everything else about the
# package is in pyproject.toml. Installing from source needs a C compiler.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shmring._fastpath",
            ["src/shmring/_fastpath.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
        )
    ]
)
