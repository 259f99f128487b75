"""The command-line apps (thin Hydra layers over the library).

==================  ===========================================  ==================================
console script      python -m form                               what it does
==================  ===========================================  ==================================
scoresde-train      ``python -m scoresde.cli`` / ``-m scoresde``  train (torchrun: DDP); sweeps
scoresde-sample     ``python -m scoresde.apps.sample``            samples.pt + samples.png
scoresde-likelihood ``python -m scoresde.apps.likelihood``        likelihood.json (NLL, bits/dim)
scoresde-report     ``python -m scoresde.apps.report``            sweep table: CSV, Markdown, plot
==================  ===========================================  ==================================

``python -m scoresde APP ...`` runs any of them by name.  The Hydra apps read ``conf/`` (see
:func:`scoresde.cli.config_path`) and check every config against the schemas of
:mod:`scoresde.apps.schema`.
"""
