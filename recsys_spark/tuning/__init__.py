"""Hyperparameter searches on a validation carve-out of the training data, and fitting with them."""
