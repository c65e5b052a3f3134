// XXH64, written for this project from the published algorithm (Yann Collet's xxHash specification),
// and the link of the prefix hash chain built on it (SPEC, "The prefix hash chain"). Pure functions of
// their arguments: safe without the GIL. Tested bit for bit against the xxhash package.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

// The five 64-bit primes of the specification.
#define PI_XXH_P1 0x9E3779B185EBCA87ULL
#define PI_XXH_P2 0xC2B2AE3D27D4EB4FULL
#define PI_XXH_P3 0x165667B19E3779F9ULL
#define PI_XXH_P4 0x85EBCA77C2B2AE63ULL
#define PI_XXH_P5 0x27D4EB2F165667C5ULL

static inline uint64_t pi_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// Lanes are read little-endian; memcpy compiles to one unaligned load on x86-64 and arm64.
static inline uint64_t pi_read64(const uint8_t* p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t pi_read32(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return v; }

static inline uint64_t pi_round(uint64_t acc, uint64_t lane) {
  acc += lane * PI_XXH_P2;
  return pi_rotl(acc, 31) * PI_XXH_P1;
}

static inline uint64_t pi_merge(uint64_t h, uint64_t v) {
  h ^= pi_round(0, v);
  return h * PI_XXH_P1 + PI_XXH_P4;
}

// The last n < 32 bytes, then the avalanche.
static inline uint64_t pi_finish(uint64_t h, const uint8_t* p, size_t n) {
  while (n >= 8) {
    h ^= pi_round(0, pi_read64(p));
    h = pi_rotl(h, 27) * PI_XXH_P1 + PI_XXH_P4;
    p += 8;
    n -= 8;
  }
  if (n >= 4) {
    h ^= (uint64_t)pi_read32(p) * PI_XXH_P1;
    h = pi_rotl(h, 23) * PI_XXH_P2 + PI_XXH_P3;
    p += 4;
    n -= 4;
  }
  while (n > 0) {
    h ^= (uint64_t)p[0] * PI_XXH_P5;
    h = pi_rotl(h, 11) * PI_XXH_P1;
    p += 1;
    n -= 1;
  }
  h ^= h >> 33;
  h *= PI_XXH_P2;
  h ^= h >> 29;
  h *= PI_XXH_P3;
  return h ^ (h >> 32);
}

static inline uint64_t pi_converge(const uint64_t* acc) {
  uint64_t h = pi_rotl(acc[0], 1) + pi_rotl(acc[1], 7) + pi_rotl(acc[2], 12) + pi_rotl(acc[3], 18);
  h = pi_merge(h, acc[0]);
  h = pi_merge(h, acc[1]);
  h = pi_merge(h, acc[2]);
  return pi_merge(h, acc[3]);
}

static inline void pi_start(uint64_t* acc, uint64_t seed) {
  acc[0] = seed + PI_XXH_P1 + PI_XXH_P2;
  acc[1] = seed + PI_XXH_P2;
  acc[2] = seed;
  acc[3] = seed - PI_XXH_P1;
}

// Fold every whole 32-byte stripe of p[0:n] into the accumulators; returns the bytes used.
static inline size_t pi_stripes(uint64_t* acc, const uint8_t* p, size_t n) {
  size_t used = 0;
  while (n - used >= 32) {
    acc[0] = pi_round(acc[0], pi_read64(p + used));
    acc[1] = pi_round(acc[1], pi_read64(p + used + 8));
    acc[2] = pi_round(acc[2], pi_read64(p + used + 16));
    acc[3] = pi_round(acc[3], pi_read64(p + used + 24));
    used += 32;
  }
  return used;
}

// XXH64 of n bytes at p.
static inline uint64_t pi_xxh64(const uint8_t* p, size_t n, uint64_t seed) {
  uint64_t acc[4];
  size_t used;
  if (n < 32) return pi_finish(seed + PI_XXH_P5 + n, p, n);
  pi_start(acc, seed);
  used = pi_stripes(acc, p, n);
  return pi_finish(pi_converge(acc) + n, p + used, n - used);
}

// What every link of a chain starts from: XXH64's four accumulators for the chain's seed, and the
// seed. Worked out once for a chain instead of at each link: in the walk's loops GCC recomputed and
// spilled them for every block (~15 instructions of ~250 a block in the staged walk).
typedef struct {
  uint64_t acc[4];
  uint64_t seed;
} pi_link_start;

static inline void pi_link_start_init(pi_link_start* s, uint64_t seed) {
  pi_start(s->acc, seed);
  s->seed = seed;
}

// XXH64(le_u64(parent) || block[0:n], seed) without building that buffer: the 8 parent bytes are
// exactly the first lane of the first stripe, so every lane after it comes straight from the block.
static inline uint64_t pi_xxh64_link_from(const pi_link_start* s, uint64_t parent, const uint8_t* block,
                                          size_t n) {
  uint64_t acc[4];
  uint64_t h;
  size_t used;
  if (n + 8 >= 32) {
    acc[0] = pi_round(s->acc[0], parent);
    acc[1] = pi_round(s->acc[1], pi_read64(block));
    acc[2] = pi_round(s->acc[2], pi_read64(block + 8));
    acc[3] = pi_round(s->acc[3], pi_read64(block + 16));
    used = 24 + pi_stripes(acc, block + 24, n - 24);
    return pi_finish(pi_converge(acc) + n + 8, block + used, n - used);
  }
  // fewer than 32 bytes in all: the parent is the first 8-byte lane of the tail
  h = s->seed + PI_XXH_P5 + n + 8;
  h ^= pi_round(0, parent);
  h = pi_rotl(h, 27) * PI_XXH_P1 + PI_XXH_P4;
  return pi_finish(h, block, n);
}

static inline uint64_t pi_xxh64_link(uint64_t parent, const uint8_t* block, size_t n, uint64_t seed) {
  pi_link_start s;
  pi_link_start_init(&s, seed);
  return pi_xxh64_link_from(&s, parent, block, n);
}

// Link i of a chain of `width`-byte blocks at data: XXH64(le_u64(parent) || block i, s->seed). For 64-byte
// blocks (block_size 16, vLLM's default) the width is a constant here, so the compiler unrolls the
// stripes and the tail of the link (no loop, no branch on the length), and what is left is the
// latency of one link after another. The walk and a store's placing loop hash with it, one link at a
// time, between their probes or inserts.
static inline uint64_t pi_chain_link_from(const pi_link_start* s, uint64_t parent, const uint8_t* data,
                                          size_t i, size_t width) {
  if (width == 64) return pi_xxh64_link_from(s, parent, data + i * 64, 64);
  return pi_xxh64_link_from(s, parent, data + i * width, width);
}

// out[i] = link(out[i-1], block i), out[-1] = parent: the chain of n_blocks blocks of `width` bytes.
static inline void pi_hash_chain(const uint8_t* data, size_t n_blocks, size_t width, uint64_t seed,
                                 uint64_t parent, uint64_t* out) {
  pi_link_start s;
  pi_link_start_init(&s, seed);
  if (width == 64) {  // written out: left to the compiler, the 32,768-token walk took 8% longer
    for (size_t i = 0; i < n_blocks; i++) out[i] = parent = pi_chain_link_from(&s, parent, data, i, 64);
    return;
  }
  for (size_t i = 0; i < n_blocks; i++) out[i] = parent = pi_chain_link_from(&s, parent, data, i, width);
}

#ifdef __cplusplus
}
#endif
