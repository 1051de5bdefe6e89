# The C extension, the writer's and reader's per-frame steps (src/shmring/_fastpath.c and the
# files it names); everything else about the package is in pyproject.toml. Installing from
# source needs a C compiler.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shmring._fastpath",
            [f"src/shmring/{name}.c" for name in ("_fastpath", "_publisher", "_taker")],
            depends=[f"src/shmring/{name}.h" for name in ("_fastpath", "shmring_layout")],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],  # make adds -Werror
        )
    ]
)
