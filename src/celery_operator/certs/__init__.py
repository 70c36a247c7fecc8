"""The webhook's CA and serving certificates: issue, rotate, inject into its configurations."""
