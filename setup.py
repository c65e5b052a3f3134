"""Builds the compiled extensions (Cython + C++): the core, prefixindex._core, and the input
converters, prefixindex._convert.

PREFIXINDEX_NO_EXTENSIONS=1 skips both (the pure-Python backend then runs). Otherwise a failed build is
an error, never a silent fallback to the slow backend.
"""

import glob
import hashlib
import os

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def core_sources() -> list:
    # Every Cython and C++ source of the compiled modules, sorted by name (tests/conftest.py hashes the same).
    names = []
    for pattern in ("*.pyx", "*.pxd", "*.pxi", "*.h"):
        names += glob.glob(os.path.join(HERE, "prefixindex", pattern))
    return sorted(names, key=os.path.basename)


def source_hash() -> str:
    # Compiled into both modules so that the tests can refuse a stale in-place build (tests/conftest.py
    # hashes the same files the same way: their contents, in the order of their file names).
    digest = hashlib.sha256()
    for name in core_sources():
        with open(name, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def extensions():
    if os.environ.get("PREFIXINDEX_NO_EXTENSIONS", "") not in ("", "0"):
        return []
    import numpy
    from Cython.Build import cythonize

    def extension(name: str) -> Extension:
        return Extension(
            f"prefixindex.{name}",
            [f"prefixindex/{name}.pyx"],
            # any source changes the hash compiled into every module: recompile both on any change
            depends=core_sources(),
            language="c++",
            include_dirs=[numpy.get_include(), "prefixindex"],
            extra_compile_args=["-O3", "-g0", "-std=c++17", "-fno-strict-aliasing"],
            define_macros=[("PREFIXINDEX_SOURCE_HASH", f'"{source_hash()}"'),
                           ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )

    return cythonize(
        [extension("_core"), extension("_convert")],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=extensions())
