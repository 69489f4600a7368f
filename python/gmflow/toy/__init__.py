"""The 2-D checkerboard toy experiment (docs/training.md#toy-experiment): the project's main job.

=================  ====================================================================
``data``           ``Checkerboard``: sampling from a generator, exact density, bin masses,
                   exact projected CDFs
``model``          ``GMFlowMLP2DDenoiser``: the GM MLP denoiser (K = 1: flow matching)
``train``          ``ToyTrainConfig``, ``train_toy``, checkpoint save/load
``evaluate``       ``sample_toy`` (every solver), metrics
``figures``        the sample grid, metrics and loss figures (matplotlib), ``replot``
``experiment``     ``run_toy_experiment``: what ``gmflow toy`` runs
=================  ====================================================================
"""

from .data import Checkerboard
from .evaluate import SOLVERS, sample_metrics, sample_toy
from .figures import plot_metrics, plot_sample_grid, plot_training_loss, replot, write_figures
from .experiment import ToyExperiment, acceptance_checks, run_toy_experiment
from .model import GMFlowMLP2DDenoiser
from .train import ToyTrainConfig, TrainResult, load_checkpoint, save_checkpoint, train_toy

__all__ = [
    "SOLVERS",
    "Checkerboard",
    "GMFlowMLP2DDenoiser",
    "ToyExperiment",
    "ToyTrainConfig",
    "TrainResult",
    "acceptance_checks",
    "load_checkpoint",
    "plot_metrics",
    "plot_sample_grid",
    "plot_training_loss",
    "replot",
    "run_toy_experiment",
    "sample_metrics",
    "sample_toy",
    "save_checkpoint",
    "train_toy",
    "write_figures",
]
