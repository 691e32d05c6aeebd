"""bbzo.defenses: certified robustness for a classifier you can only query (ZO-AE-DS).

- ``data``: data sets with a fixed, seeded train/validation/test split.
- ``models``: ``small_cnn`` (the classifier to protect), ``DnCNN``, ``AutoEncoder``.
- ``defense``: ``Defense`` folders (denoiser, autoencoder, black-box spec) and ``resolve_model``.
- ``training``: ``train_classifier``, ``train_defense`` (fo-ds, fo-ae-ds, zo-ds, zo-ae-ds).
- ``smoothing``: Cohen's PREDICT / CERTIFY over a query layer (``SmoothedClassifier``).
- ``certify``: certification runs into a run folder (``certify_run``), ``compare``.

The CLI is ``bbzo defend`` (``bbzo.cli.defend``); the HTTP classifier server is
``bbzo.blackbox.serve.classifier``.
"""
