"""Training Medusa, Hydra and Hydra++ heads on a frozen base model."""
