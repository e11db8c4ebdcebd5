"""The PyTorch reference decoder the engines are checked against."""
