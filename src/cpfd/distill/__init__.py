"""Distillation: confidence functions (registry), losses (registry), teacher temperature calibration."""
