"""`python -m fastslow_cli` runs the same app as the `fastslow` console script."""

from fastslow_cli.cli.app import main

if __name__ == "__main__":
    main()
