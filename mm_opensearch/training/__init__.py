"""Two-stage alignment training of the towers on cached backbone features."""

from mm_opensearch.training.run import TrainingInputs, train_from_files
from mm_opensearch.training.trainer import TrainConfig, TrainResult, train_model

__all__ = ["TrainConfig", "TrainResult", "TrainingInputs", "train_from_files", "train_model"]
