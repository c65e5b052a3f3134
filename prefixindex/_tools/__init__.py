"""The command-line tools of ``python -m prefixindex`` (and the ``prefixindex`` console script).

None of this is the index: ``bench`` (a package, one module per section of the benchmark table),
``demo`` (synthetic traffic routed through the index) and ``info`` (what runs here) are imported
only when their command runs, so that ``import prefixindex`` stays small.
"""
