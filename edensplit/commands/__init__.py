"""What the `edensplit` command runs once `edensplit.cli` has parsed it: a module per command (interpolate.py,
serve.py); options.py turns parsed flags into settings."""
