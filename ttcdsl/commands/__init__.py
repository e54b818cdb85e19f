"""One module per `ttc` sub-command; each exposes `register(subparsers)`."""
