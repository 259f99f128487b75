"""The command-line apps (thin Hydra layers over the library).

==================  ===========================================  ==================================
console script      python -m form                               what it does
==================  ===========================================  ==================================
scoresde-train      ``python -m scoresde.apps.train``             train (torchrun: DDP); sweeps
scoresde-sample     ``python -m scoresde.apps.sample``            samples.pt + samples.png
scoresde-likelihood ``python -m scoresde.apps.likelihood``        likelihood.json (NLL, bits/dim)
scoresde-report     ``python -m scoresde.apps.report``            sweep table: CSV, Markdown, plot
scoresde-bench      ``python -m scoresde.apps.bench``             sampler grid: CSV, Markdown, plots
==================  ===========================================  ==================================

``python -m scoresde APP ...`` runs any of them by name.  The Hydra apps read ``conf/`` (see
:func:`scoresde.apps._common.config_path`) and check every config against the schemas of
:mod:`scoresde.apps.schema`.
"""
