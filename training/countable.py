"""``python -m training.countable``: the command; its code is ``training/bundle/countable.py``."""

from training.bundle.countable import main

if __name__ == "__main__":
    main()
