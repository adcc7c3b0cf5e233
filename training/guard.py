"""``python -m training.guard``: the command; its code is ``training/bundle/guard.py``."""

from training.bundle.guard import main

if __name__ == "__main__":
    main()
