"""`python -m microweave ...`: the same CLI as the `microweave` command."""

from .cli import main

if __name__ == "__main__":
    main()
