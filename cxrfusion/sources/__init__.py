"""Where the raw dataset comes from: each source writes the Kaggle layout under data/raw."""
