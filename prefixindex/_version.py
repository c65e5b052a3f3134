"""The package's version, in one place: pyproject.toml reads it from here (``[tool.setuptools.dynamic]``)
and ``prefixindex.__version__`` re-exports it."""

__version__ = "0.2.0"
