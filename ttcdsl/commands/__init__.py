"""One module per `ttc` sub-command; each exposes `register(subparsers)`.  Modules whose names
start with ``_`` are pieces the commands share (options, the progress bar)."""
