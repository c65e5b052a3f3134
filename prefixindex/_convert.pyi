"""Types of the compiled converters, prefixindex._convert (the same API as prefixindex._convert_py)."""

from typing import Any, Callable, Optional

import numpy as np

__all__ = ["hashes_u64", "slot_writer", "token_bytes", "token_ids_block_bytes"]

SOURCE_HASH: str
MAX_TOKEN_IDS: int

def token_bytes(tokens: Any) -> Any: ...
def token_ids_block_bytes(tokens: Any, n_blocks: int) -> Optional[np.ndarray]: ...
def hashes_u64(values: Any) -> Optional[np.ndarray]: ...
def slot_writer(cls: type) -> Callable[..., None]: ...
