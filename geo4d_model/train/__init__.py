"""Fine-tuning of the Geo4D network (plain PyTorch): training data, recipe, losses, trainer, validation."""
