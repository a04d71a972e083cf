"""torchdx benchmarks: overhead, scale and diagnostic-power measurements.

Every benchmark is a ratio against a baseline measured in the same process, and writes its
figures to ``docs/results/NAME.json`` through :func:`benchmarks._results.write_results`; the
figures quoted in README and docs are rendered from those files by
``python -m benchmarks.render_figures`` (``--check`` fails when a doc and its results disagree).
"""
