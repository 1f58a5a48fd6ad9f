"""mi-ref: a float64 reference implementation of "On Mutual Information Maximization for
Representation Learning" (Tschannen, Djolonga, Rubenstein, Gelly, Lucic, ICLR 2020).

Math modules (pure functions of params and arrays; no I/O):
    nn, flows, critics, bounds, optim, jacobian, tree, views, batches
Everything else (idx, datasets, probe, train, results, plots, cli) builds on them.
"""

__version__ = "0.1.0"
