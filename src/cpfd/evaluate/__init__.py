"""Metrics (scikit-learn / torchmetrics), CPFD weight diagnostics, reports and plots."""
