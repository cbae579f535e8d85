"""Builds the compiled hot path in native/ (see pyproject.toml for the rest)."""

import platform

from Cython.Build import cythonize
from setuptools import Extension, setup

# -O3 for the codec loops; the CRC kernel selects its instruction set at run
# time, so the build stays portable across CPUs of one architecture.
COMPILE_ARGS = ["-O3", "-std=c11", "-Wall", "-Wno-unused-function"]
if platform.machine() in ("aarch64", "arm64"):
    COMPILE_ARGS.append("-march=armv8-a")

CRC32C_SOURCES = ["native/src/crc32c.c"]


def native_module(name, extra_sources=()):
    return Extension(
        f"native.{name}",
        sources=[f"native/{name}.pyx", *extra_sources],
        include_dirs=["native/src"],
        extra_compile_args=COMPILE_ARGS,
    )


setup(
    ext_modules=cythonize(
        [
            native_module("crc", CRC32C_SOURCES),
            native_module("codec"),
            native_module("walframe", CRC32C_SOURCES),
        ],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    ),
)
