"""``python -m training.detection``: the command; its code is ``training/fitting/detection.py``."""

from training.fitting.detection import main

if __name__ == "__main__":
    main()
