"""goodfit: fine-tune a converged model on new data without breaking what it already does."""

__version__ = "0.1.0"
