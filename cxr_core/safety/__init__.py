"""What stands between a film and a score: out-of-distribution checks, the detector and its screening,
burned-in markers, the blind gate (exact and near copies) and the screening of films for a new session.
"""
