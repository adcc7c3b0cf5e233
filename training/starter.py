"""``python -m training.starter``: the command; its code is ``training/bundle/starter.py``."""

from training.bundle.starter import main

if __name__ == "__main__":
    main()
