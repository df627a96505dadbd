"""Config sources, one module each; built from URLs by the table in `microweave._backends`."""
