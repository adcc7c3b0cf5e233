"""``python -m training.compose``: the command; its code is ``training/data/compose.py``."""

from training.data.compose import main

if __name__ == "__main__":
    main()
