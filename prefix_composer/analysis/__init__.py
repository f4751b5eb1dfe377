"""Analysis for the scripts (plots, tables, statistics); never imported by training."""
