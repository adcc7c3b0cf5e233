"""``python -m training.marrow``: the command; its code is ``training/fitting/marrow.py``."""

from training.fitting.marrow import main

if __name__ == "__main__":
    main()
