"""Train: PyTorch training functions for critbatch.

A trainable takes a :class:`~trainables.api.TrialConfig` and a ``report`` callable and
trains one (batch size, learning rate, seed) trial, reporting step, examples seen, losses
and eval metrics as it goes. It knows nothing of Ray, Optuna or MLflow. Workloads (model,
data, loss, metrics) are looked up by name in :mod:`trainables.registry`.
"""
