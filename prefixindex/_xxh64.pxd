# cython: language_level=3
"""XXH64 and the prefix hash chain (implemented in _xxh64.h): pure functions, callable without the GIL."""

from libc.stdint cimport uint8_t, uint64_t


cdef extern from "_xxh64.h" nogil:
    uint64_t xxh64 "pi_xxh64"(const uint8_t* p, size_t n, uint64_t seed) noexcept
    uint64_t xxh64_link "pi_xxh64_link"(uint64_t parent, const uint8_t* block, size_t n, uint64_t seed) noexcept
    ctypedef struct LinkStart "pi_link_start":
        pass
    void link_start_init "pi_link_start_init"(LinkStart* s, uint64_t seed) noexcept
    uint64_t chain_link_from "pi_chain_link_from"(const LinkStart* s, uint64_t parent, const uint8_t* data,
                                                  size_t i, size_t width) noexcept
    void hash_chain "pi_hash_chain"(const uint8_t* data, size_t n_blocks, size_t width, uint64_t seed,
                                    uint64_t parent, uint64_t* out) noexcept
