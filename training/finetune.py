"""``python -m training.finetune``: the command; its code is ``training/fitting/finetune.py``."""

from training.fitting.finetune import main

if __name__ == "__main__":
    main()
