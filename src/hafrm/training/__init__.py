"""Training: the one configuration object (config), the Trainer subclass (trainer), the pipeline from files to an
exported model (pipeline), the cached passes before training (precompute) and loading a finished run (loading)."""
