"""``python -m training.marrow_bundle``: the command; its code is ``training/bundle/marrow_bundle.py``."""

from training.bundle.marrow_bundle import main

if __name__ == "__main__":
    main()
