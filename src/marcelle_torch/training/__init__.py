"""Fine-tuning model folders on examples into new model versions (the training loop's core)."""

from .finetune import TrainingCanceled, Version, examples_digest, examples_from_dir, fine_tune, write_version

__all__ = ["TrainingCanceled", "Version", "examples_digest", "examples_from_dir", "fine_tune", "write_version"]
