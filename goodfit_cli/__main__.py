"""`python -m goodfit_cli ...` (what torchrun launches) runs the CLI."""

from goodfit_cli.cli.app import main

if __name__ == "__main__":
    main()
