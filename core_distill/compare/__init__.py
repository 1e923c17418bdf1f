"""`distill compare`: settings.py (settings, budgets, grids) <- report.py (conclusions, page, plot; with
stats.py's intervals) <- runner.py (the jobs, the pool and `compare` itself).
"""
