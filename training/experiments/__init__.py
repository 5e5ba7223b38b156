"""Experiments that measure the papers' claims under equal compute (`lsseg experiment ...`)."""
