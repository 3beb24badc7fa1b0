"""The synthetic demo dataset and the demo pipeline."""
