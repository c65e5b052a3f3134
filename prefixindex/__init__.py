"""prefixindex: which serving pod already holds the longest prefix of a prompt in its KV cache.

The table is compiled (Cython + C++) when the extension imports, and pure Python otherwise;
``BACKEND`` says which runs. ``PREFIXINDEX_NO_EXTENSIONS=1`` forces the pure-Python backend, and
``PREFIXINDEX_REQUIRE_EXTENSIONS=1`` makes a missing extension an ImportError instead of a fallback.
"""

from typing import TYPE_CHECKING

from ._config import Config
from ._events import AllBlocksCleared, BlockRemoved, BlockStored, encode_tokens
from ._version import __version__ as __version__  # re-exported (mypy --strict: explicitly)

if TYPE_CHECKING:  # one typed API for both backends: _core.pyi
    from . import _core as _impl
else:  # the flags and the rules: prefixindex/_backend.py
    from ._backend import choose as _choose

    _impl = _choose("prefixindex._core", "prefixindex._core_py")

BACKEND: str = _impl.BACKEND
SyncPrefixHashTable = _impl.SyncPrefixHashTable

__all__ = [
    "AllBlocksCleared",
    "BACKEND",
    "BlockRemoved",
    "BlockStored",
    "Config",
    "SyncPrefixHashTable",
    "encode_tokens",
]
