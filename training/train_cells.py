"""``python -m training.train_cells``: the command; its code is ``training/fitting/train_cells.py``."""

from training.fitting.train_cells import main

if __name__ == "__main__":
    main()
