"""The application: the ``iwae`` command line, the evaluation of run directories and their
eval.json, the paper's tables (reproduce), plots and provenance."""
