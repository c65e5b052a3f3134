// What the compiled core reaches inside libstdc++'s std::unordered_map for, and the plain equivalents
// for other standard libraries: the prefix map's bucket array (the walk's staged prefetches and its
// branch-free probes) and, for both maps, an insert that does not search the bucket a second time.
// Each is the map's private member, named by an explicit instantiation, which C++ allows (access is
// not checked in the arguments of an explicit instantiation; [temp.spec.general]). Included by the
// Cython modules after _native.h, whose types it works on.
#pragma once

#include "_native.h"

namespace pi {

// The prefix map's bucket array, for a walk that prefetches a probe's lines in stages ahead of it
// (the staged way of _entries.walk). The standard interface gives a bucket only by reading it (and
// the node it points to): one load that may miss, on which the next depends, so every cold probe held
// the processor up. With the array, a walk prefetches the bucket's slot, then the node before the
// bucket's first, then that first node, then the second, each a few blocks before its probe, and
// nothing waits; and find_near and find_raw search a bucket without asking the map for each node's
// bucket. libstdc++ only (other libraries: RAW_BUCKETS 0, the walk probes through the map's public
// interface, tests/test_walk_choice.py).
#if defined(__GLIBCXX__)
static constexpr int RAW_BUCKETS = 1;
using NodeBase = std::__detail::_Hash_node_base;
using PrefixNode = std::__detail::_Hash_node<std::pair<const uint64_t, Entry>, false>;
using PrefixTable = std::__umap_hashtable<uint64_t, Entry, BucketHash, std::equal_to<uint64_t>,
                                          PoolAllocator<std::pair<const uint64_t, Entry>>>;
using EngineNode = std::__detail::_Hash_node<std::pair<const uint64_t, uint64_t>, false>;
using EngineTable = std::__umap_hashtable<uint64_t, uint64_t, BucketHash, std::equal_to<uint64_t>,
                                          PoolAllocator<std::pair<const uint64_t, uint64_t>>>;
// exposed(Tag()) is the member that Expose<Tag, &Class::member> was instantiated with: a tag says the
// member's type and declares the friend, which that instantiation defines.
template <class Tag, typename Tag::type Member>
struct Expose {
  friend typename Tag::type exposed(Tag) { return Member; }
};
#define PI_MEMBER_TAG(Name, ...) \
  struct Name {                  \
    using type = __VA_ARGS__;    \
    friend type exposed(Name);   \
  }
PI_MEMBER_TAG(MapsTable, PrefixTable PrefixMap::*);
PI_MEMBER_TAG(TablesBuckets, NodeBase** PrefixTable::*);
PI_MEMBER_TAG(EnginesTable, EngineTable EngineMap::*);
PI_MEMBER_TAG(EngineBuckets, NodeBase** EngineTable::*);
template struct Expose<MapsTable, &PrefixMap::_M_h>;
template struct Expose<TablesBuckets, &PrefixTable::_M_buckets>;
template struct Expose<EnginesTable, &EngineMap::_M_h>;
template struct Expose<EngineBuckets, &EngineTable::_M_buckets>;
static inline NodeBase** bucket_array(PrefixMap& m) {
  return (m.*exposed(MapsTable())).*exposed(TablesBuckets());
}
static inline NodeBase** bucket_array(EngineMap& m) {
  return (m.*exposed(EnginesTable())).*exposed(EngineBuckets());
}
#else
static constexpr int RAW_BUCKETS = 0;
struct NodeBase {
  NodeBase* _M_nxt;
};
static inline NodeBase** bucket_array(PrefixMap&) { return nullptr; }
#endif

// A prefetch that the optimiser keeps: GCC dropped a loop whose only effects were __builtin_prefetch
// (with the loads that fed it), as if it did nothing; the empty asm says the address is used.
static inline void fetch_kept(const void* p) {
  __builtin_prefetch(p);
#if defined(__GNUC__)
  asm volatile("" : : "r"(p));
#endif
}

// What the inserts, finds and erases of n keys in a map that may be cold will read, fetched before
// them: each key's bucket slot, the node before the bucket's first and the first are read, and the
// first's successor prefetched (an insert's search reads it to see where the bucket ends: emplace_raw;
// an erase of the first node, to see whether the bucket ends with it). The chains of loads of
// different keys overlap as far as the processor runs ahead. (Tried, not kept: the same loads
// in stages over chunks of 16 keys, as the walk prefetches; no faster.)
template <class V>
static inline void touch_for_updates(U64Map<V>& m, const uint64_t* keys, size_t n) {
#if defined(__GLIBCXX__)
  NodeBase** bk = bucket_array(m);
  BucketHash hf = m.hash_function();
  size_t nb = m.bucket_count();
  for (size_t i = 0; i < n; i++) {
    NodeBase* before = bk[bucket_index(hf, keys[i], nb)];
    if (before == nullptr) continue;  // an empty bucket: nothing to search
    NodeBase* second = before->_M_nxt->_M_nxt;
    if (second != nullptr) fetch_kept(second);
  }
#else
  for (size_t i = 0; i < n; i++) touch_bucket(m, keys[i]);
#endif
}

// The stages, each given the bucket b = bucket_index(hash, key, bucket count) (what m.bucket(key) computes).
static inline void fetch_slot(NodeBase** bk, size_t b) { __builtin_prefetch(bk + b); }
static inline void fetch_before(NodeBase** bk, size_t b) { __builtin_prefetch(bk[b]); }  // nullptr: harmless
static inline void fetch_first(NodeBase** bk, size_t b) {
  NodeBase* before = bk[b];
  if (before != nullptr && before->_M_nxt != nullptr) __builtin_prefetch(before->_M_nxt);
}

static inline void fetch_second(NodeBase** bk, size_t b, uint64_t key) {
#if defined(__GLIBCXX__)
  NodeBase* before = bk[b];
  if (before == nullptr) return;
  PrefixNode* first = static_cast<PrefixNode*>(before->_M_nxt);
  if (first != nullptr && first->_M_v().first != key && first->_M_nxt != nullptr)
    __builtin_prefetch(first->_M_nxt);
#endif
}

#if defined(__GLIBCXX__)
// The node of bucket b that holds key, or nullptr: the bucket's nodes, each compared before the bucket
// of the next is asked (a node holding the key is in the key's bucket, so a hit needs no division past
// the first), stopping where the bucket ends. find_raw's probe, and emplace_raw's search of a map that
// may be cold.
template <class Node>
static inline Node* search_bucket(const BucketHash& hf, NodeBase** bk, size_t nb, size_t b, uint64_t key) {
  NodeBase* before = bk[b];
  if (before == nullptr) return nullptr;
  for (Node* p = static_cast<Node*>(before->_M_nxt); p != nullptr; p = p->_M_next()) {
    if (p->_M_v().first == key) return p;
    Node* next = p->_M_next();
    if (next == nullptr) return nullptr;
    if (next->_M_v().first != key && bucket_index(hf, next->_M_v().first, nb) != b) return nullptr;
  }
  return nullptr;
}
#endif

// find_in_bucket on the array (search_bucket).
static inline Entry* find_raw(const BucketHash& hf, NodeBase** bk, size_t nb, size_t b, uint64_t key) {
#if defined(__GLIBCXX__)
  PrefixNode* hit = search_bucket<PrefixNode>(hf, bk, nb, b, key);
  return hit != nullptr ? &hit->_M_v().second : nullptr;
#else
  return nullptr;
#endif
}

#if defined(__GLIBCXX__)
// The node among the first four from n1 (a bucket's first) that holds key, or nullptr, compared with
// no branch on which it is; *fourth is the fourth node (the last one, where the list ends sooner).
// Nodes past the bucket's end are other buckets' and cannot hold the key.
template <class Node>
static inline Node* among_first_four(Node* n1, uint64_t key, Node** fourth) {
  Node* n2 = n1->_M_next();
  n2 = n2 != nullptr ? n2 : n1;
  Node* n3 = n2->_M_next();
  n3 = n3 != nullptr ? n3 : n2;
  Node* n4 = n3->_M_next();
  n4 = n4 != nullptr ? n4 : n3;
  *fourth = n4;
  Node* hit = n4->_M_v().first == key ? n4 : nullptr;
  hit = n3->_M_v().first == key ? n3 : hit;
  hit = n2->_M_v().first == key ? n2 : hit;
  return n1->_M_v().first == key ? n1 : hit;
}
#endif

// find_entry for a map in the caches (the plain beside-the-chain walk): the first four nodes from the
// bucket's first are compared with no branch on where the key is, and one branch on whether it was
// among them. A node holding the key is in the key's bucket, so comparing nodes past the bucket's end
// (other buckets' nodes, or the last node again where the list ends) cannot give a wrong hit; only a key
// not among the four takes the exact search (a miss: the walk's last probe). The loop of find_entry
// branches on each node, and which node holds a key differs from one query to the next: beside the
// chain, each mispredicted branch throws away the hashing the processor had run ahead.
static inline Entry* find_near(PrefixMap& m, uint64_t key) {
#if defined(__GLIBCXX__)
  NodeBase** bk = bucket_array(m);
  size_t nb = m.bucket_count();
  BucketHash hf = m.hash_function();
  size_t b = bucket_index(hf, key, nb);
  NodeBase* before = bk[b];
  if (before == nullptr) return nullptr;  // an empty bucket's slot is null: the key is not held
  PrefixNode* fourth;  // (a bucket with a slot has a first node)
  PrefixNode* hit = among_first_four(static_cast<PrefixNode*>(before->_M_nxt), key, &fourth);
  if (__builtin_expect(hit != nullptr, 1)) return &hit->_M_v().second;
  return find_raw(hf, bk, nb, b, key);
#else
  return find_entry(m, key);
#endif
}

// try_emplace(key, value) of a map that holds no node for the key in the common case (a store's new
// block), as {the value's address, whether it was inserted}. The map's own try_emplace searches the
// key's bucket to the end, asking the map for each node's bucket (a division by the prime bucket
// count a node, and a branch on where the bucket ends, mispredicted once an insert): with a maximum
// load factor of 2, a quarter of a loop of 10-block stores (0.70-0.75 -> 0.50-0.57 us an event), a
// tenth of the bench's process_events (59.9-69.6 -> 55.6-62.8 ns a block; docs/performance.md).
// Here the first four nodes from the bucket's first are compared without branching (among_first_four,
// as find_near does); if none holds the key and the bucket ends within them (the fifth node is in another
// bucket, or there is none: one division), the key is absent and the node goes in through the map's
// own insert of a node known to be new (_M_insert_unique_node: the same rehash and the same place at
// the bucket's head as try_emplace's), else try_emplace decides. That is for a map in the caches. In a
// map that may be cold (`cold`: TOUCH_BUCKETS_FROM entries or more) the four nodes are four misses one
// after the other, three of them usually in other buckets: there the bucket is searched node by node to
// its end (a division for each node past the first), then the same insert; with touch_for_updates
// having fetched the first two nodes, a loop of 10-block stores into 100 growing contexts went from
// 4.8-5.2 to 3.8-4.0 us an event (docs/performance.md). libstdc++ 11 to 15 (whose insert has
// this signature; tests/test_map_inserts.py), try_emplace itself elsewhere.
#if defined(__GLIBCXX__) && defined(_GLIBCXX_RELEASE) && _GLIBCXX_RELEASE >= 11 && _GLIBCXX_RELEASE <= 15
static constexpr int RAW_INSERTS = 1;
PI_MEMBER_TAG(PrefixInsert, PrefixTable::iterator (PrefixTable::*)(size_t, size_t, PrefixNode*, size_t));
PI_MEMBER_TAG(EngineInsert, EngineTable::iterator (EngineTable::*)(size_t, size_t, EngineNode*, size_t));
template struct Expose<PrefixInsert, &PrefixTable::_M_insert_unique_node>;
template struct Expose<EngineInsert, &EngineTable::_M_insert_unique_node>;

template <class Table, class Node, class TableTag, class BucketsTag, class InsertTag, class V>
static inline std::pair<V*, bool> emplace_raw(U64Map<V>& m, uint64_t key, const V& value, bool cold) {
  Table& t = m.*exposed(TableTag());
  NodeBase** bk = t.*exposed(BucketsTag());
  size_t nb = m.bucket_count();
  BucketHash hf = m.hash_function();
  size_t code = hf(key);
  size_t b = code % nb;  // the map's bucket(key)
  NodeBase* before = bk[b];
  if (cold) {
    Node* hit = search_bucket<Node>(hf, bk, nb, b, key);
    if (hit != nullptr) return {&hit->_M_v().second, false};
  } else if (before != nullptr) {  // (an empty bucket: the key is absent)
    Node* fourth;
    Node* hit = among_first_four(static_cast<Node*>(before->_M_nxt), key, &fourth);
    if (hit != nullptr) return {&hit->_M_v().second, false};
    Node* n5 = fourth->_M_next();  // (nullptr where the list ended within four)
    // a bucket's nodes are consecutive in the list: if the fifth is in it, so are the four before
    if (rarely(n5 != nullptr && bucket_index(hf, n5->_M_v().first, nb) == b)) {
      auto r = m.try_emplace(key, value);
      return {&r.first->second, r.second};
    }
  }
  // the node allocator is a private base of the table: a C-style cast may name it ([expr.cast])
  using NodeAlloc =
      std::__detail::_Hashtable_alloc<std::__alloc_rebind<typename U64Map<V>::allocator_type, Node>>;
  NodeAlloc& alloc = (NodeAlloc&)t;
  Node* node = alloc._M_allocate_node(key, value);
  try {
    return {&(t.*exposed(InsertTag()))(b, code, node, 1)->second, true};
  } catch (...) {  // a rehash that could not allocate: the map is as it was
    alloc._M_deallocate_node(node);
    throw;
  }
}
static inline std::pair<Entry*, bool> emplace_new(PrefixMap& m, uint64_t key, const Entry& value, bool cold) {
  return emplace_raw<PrefixTable, PrefixNode, MapsTable, TablesBuckets, PrefixInsert>(m, key, value, cold);
}
static inline std::pair<uint64_t*, bool> emplace_new(EngineMap& m, uint64_t key, const uint64_t& value, bool cold) {
  return emplace_raw<EngineTable, EngineNode, EnginesTable, EngineBuckets, EngineInsert>(m, key, value, cold);
}
#else
static constexpr int RAW_INSERTS = 0;
template <class V>
static inline std::pair<V*, bool> emplace_new(U64Map<V>& m, uint64_t key, const V& value, bool) {
  auto r = m.try_emplace(key, value);
  return {&r.first->second, r.second};
}
#endif

}  // namespace pi
