"""A tiny Gaussian-mixture head: an MLP that predicts K means and weights of a 2-D mixture."""

from .model import GMHead, gm_nll, make_batch, train

__all__ = ["GMHead", "gm_nll", "make_batch", "train"]
