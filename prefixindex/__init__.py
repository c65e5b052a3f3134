"""prefixindex: which serving pod already holds the longest prefix of a prompt in its KV cache.

The table is compiled (Cython + C++) when the extension imports, and pure Python otherwise;
``BACKEND`` says which runs. ``PREFIXINDEX_NO_EXTENSIONS=1`` forces the pure-Python backend, and
``PREFIXINDEX_REQUIRE_EXTENSIONS=1`` makes a missing extension an ImportError instead of a fallback.
"""

import os
from typing import TYPE_CHECKING

from ._config import Config
from ._events import AllBlocksCleared, BlockRemoved, BlockStored, encode_tokens

__version__ = "0.1.0"


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


if TYPE_CHECKING:  # one typed API for both backends: _core.pyi
    from . import _core as _impl
elif _flag("PREFIXINDEX_NO_EXTENSIONS"):
    from . import _core_py as _impl
else:
    try:
        from . import _core as _impl
    except ImportError:
        if _flag("PREFIXINDEX_REQUIRE_EXTENSIONS"):
            raise
        from . import _core_py as _impl

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
