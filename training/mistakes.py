"""``python -m training.mistakes``: the command; its code is ``training/evaluation/mistakes.py``."""

from training.evaluation.mistakes import main

if __name__ == "__main__":
    main()
