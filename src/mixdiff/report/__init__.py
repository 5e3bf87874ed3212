"""Figures and tables a researcher would put in a paper."""
