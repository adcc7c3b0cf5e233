"""``python -m training.stage1``: the command; its code is ``training/fitting/stage1.py``."""

from training.fitting.stage1 import main

if __name__ == "__main__":
    main()
