"""``python -m training.robustness``: the command; its code is ``training/evaluation/robustness.py``."""

from training.evaluation.robustness import main

if __name__ == "__main__":
    main()
