"""PyTorch encoders that turn documents into vectors."""
