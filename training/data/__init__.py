"""What training reads and makes from ../shared/data: the dataset readers, cell crops cut as the
count path cuts them, composed marrow fields."""
