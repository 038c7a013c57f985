"""Measuring and predicting speed: the byte counter, the analytic comm model, the cost model and its
calibration, ``dmt bench``, and shaped links between emulated hosts."""
