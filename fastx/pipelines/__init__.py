"""Task-level entry points built on the models: what a user calls with text in and results out."""
