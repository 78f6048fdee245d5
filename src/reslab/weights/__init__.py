"""Trained weights: files, the checks a state dict passes on its way into a network, and the
networks they rebuild with their input normalisation and class names.

    uv run python -c "from reslab.weights.trained import load_trained; print(load_trained('resnet20.cifar10').classes)"

Three modules on two floors of the house: :mod:`~reslab.weights.files` (reading weights files
and their metadata) and :mod:`~reslab.weights.checks` (what loads into which network) need no
network of their own and sit below the models, which load named weights through them
(``create_model(name, weights=...)``, with :mod:`reslab.hub` resolving the names);
:mod:`~reslab.weights.trained` rebuilds a trained network from its file, with its normalisation
(a :mod:`reslab.data` module) and classes, for prediction, evaluation and export, below the engine.
"""
