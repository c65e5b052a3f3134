"""prefixindex: which serving pod already holds the longest prefix of a prompt in its KV cache.

The table is compiled (Cython + C++) when the extension imports, and pure Python otherwise;
``BACKEND`` says which runs. ``PREFIXINDEX_NO_EXTENSIONS=1`` forces the pure-Python backend.
"""

import os

from ._config import Config
from ._events import AllBlocksCleared, BlockRemoved, BlockStored, encode_tokens

__version__ = "0.1.0"

if os.environ.get("PREFIXINDEX_NO_EXTENSIONS", "") not in ("", "0"):
    from ._core_py import SyncPrefixHashTable
    BACKEND = "python"
else:
    try:
        from ._core import SyncPrefixHashTable
        BACKEND = "cython"
    except ImportError:
        if os.environ.get("PREFIXINDEX_REQUIRE_EXTENSIONS", "") not in ("", "0"):
            raise
        from ._core_py import SyncPrefixHashTable
        BACKEND = "python"

__all__ = [
    "AllBlocksCleared",
    "BACKEND",
    "BlockRemoved",
    "BlockStored",
    "Config",
    "SyncPrefixHashTable",
    "encode_tokens",
]
