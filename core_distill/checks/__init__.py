"""What `DistillSpec.preflight()` checks before a run is queued: preflight.py (models, vocabularies, data)
over files.py (bounded reads of the files a spec names).
"""
