"""prefixindex's asv benchmark suite (see docs/performance.md and ../asv.conf.json)."""
