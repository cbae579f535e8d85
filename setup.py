"""Builds the compiled hot path in native/ and the wire modules of tessera/api/.

The rest of the package description is in pyproject.toml.
"""

import platform
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

# -O3 for the codec loops; the CRC kernel selects its instruction set at run
# time, so the build stays portable across CPUs of one architecture.
COMPILE_ARGS = ["-O3", "-std=c11", "-Wall", "-Wno-unused-function"]
if platform.machine() in ("aarch64", "arm64"):
    COMPILE_ARGS.append("-march=armv8-a")

CRC32C_SOURCES = ["native/src/crc32c.c"]


def generate_wire_modules():
    """Compile tessera/api/*.proto into *_pb2.py (and *_pb2_grpc.py) beside them."""
    from grpc_tools import protoc

    root = Path(__file__).resolve().parent
    well_known = Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(path.relative_to(root)) for path in (root / "tessera/api").glob("*.proto"))
    arguments = ["protoc", f"-I{root}", f"-I{well_known}", f"--python_out={root}",
                 f"--pyi_out={root}", f"--grpc_python_out={root}", *sources]
    if protoc.main(arguments) != 0:
        raise RuntimeError(f"protoc failed on {sources}")


def native_module(name, extra_sources=()):
    return Extension(
        f"native.{name}",
        sources=[f"native/{name}.pyx", *extra_sources],
        include_dirs=["native/src"],
        extra_compile_args=COMPILE_ARGS,
    )


generate_wire_modules()
setup(
    ext_modules=cythonize(
        [
            native_module("crc", CRC32C_SOURCES),
            native_module("codec"),
            native_module("hpack", ["native/src/hpack.c"]),
            native_module("keyindex"),
            native_module("store_apply"),
            native_module("walframe", CRC32C_SOURCES),
            native_module("edge", ["native/src/h2edge.c", "native/src/hpack.c", "native/src/tls.c"]),
        ],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    ),
)
