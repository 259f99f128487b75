"""Benchmark engine: samplers on a grid of problem x SDE x sampler x NFE budget x seed, plus the
likelihood and sampler-overhead benchmarks.

The library half of ``scoresde-bench`` (the Hydra app in :mod:`scoresde.apps.bench` is a thin
layer over it), usable from a notebook:

>>> import scoresde as sd
>>> from scoresde import bench
>>> cells = bench.expand_grid(["ring8"], ["vp"], [bench.SamplerSpec("dpm_solver", "dpm_solver")],
...                           budgets=[10], seeds=[0])
>>> rows = bench.Bench(n=500).run(cells, progress=False)     # doctest: +SKIP
>>> bench.write_results(rows, "out/")                          # doctest: +SKIP

One job per file, imports pointing down (each file imports only the core and the files above it
in this list):

=================  ==============================================================================
``problems.py``    :class:`Problem`: a mixture with its exact score, a checkpoint, or a network
``grid.py``        :class:`SamplerSpec`, :class:`Cell`, :func:`expand_grid`, the default samplers
``tables.py``      rows to CSV and back, :func:`aggregate` over seeds, the Markdown tables
``plots.py``       quality against NFE and seconds (matplotlib imported when called)
``runner.py``      :class:`Bench` runs cells (timing the score inside the run); :func:`run_grid`
``likelihood.py``  :func:`likelihood_rows`: ``sd.log_likelihood`` against exact densities
``reference.py``   Song et al.'s likelihood method re-created (scipy RK45), the likelihood's yardstick
``overhead.py``    :func:`overhead_rows`: wall time over time inside the score, per batch size
``peers.py``       :func:`peers.peer_rows`: diffusers' schedulers on exported exact scores (optional extra)
=================  ==============================================================================

The engine imports only the core of :mod:`scoresde` (never :mod:`scoresde.apps` or Hydra).
"""

from .grid import DEFAULT_SAMPLERS, DETERMINISTIC, QUICK_SAMPLERS, Cell, SamplerSpec, expand_grid, specs_from_config
from .likelihood import likelihood_rows, write_likelihood
from .overhead import overhead_rows, write_overhead
from .plots import write_plots
from .problems import Problem, is_checkpoint, load_problem, network_problem
from .reference import reference_log_likelihood, song_reference
from .runner import Bench, TimedScore, run_grid, time_score, write_results
from .tables import (FIELDS, aggregate, fmt, headline, md_table, overhead_table, read_csv, write_csv,
                     write_markdown)

__all__ = ["SamplerSpec", "Cell", "Problem", "load_problem", "is_checkpoint", "network_problem", "expand_grid",
           "specs_from_config", "DETERMINISTIC", "DEFAULT_SAMPLERS", "QUICK_SAMPLERS", "Bench", "TimedScore",
           "time_score", "run_grid", "write_results", "FIELDS", "aggregate", "read_csv", "write_csv", "fmt",
           "md_table", "headline", "overhead_table", "write_markdown", "write_plots", "likelihood_rows",
           "write_likelihood", "song_reference", "reference_log_likelihood", "overhead_rows", "write_overhead"]
