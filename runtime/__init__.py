"""The ttcdsl runtime (imported as `ttcdsl.runtime`): executes plans on a backend."""
