"""The pieces MonoBeast and PolyBeast share: V-trace, losses, flags, checkpoints, logging."""
