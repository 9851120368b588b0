"""Defenses (adversarial training, DP-SGD, pre- and post-processing, compression) arrive here.

Until then every model is audited as trained, and the results' `defense` column reads "none".
"""
