"""Incomplete tables: ``iwae.Imputer`` (a scikit-learn transformer) and the tables of ``iwae impute``.

Neither module is loaded by ``import iwae``: they need scikit-learn and pandas (``iwae[missing]``).
"""
