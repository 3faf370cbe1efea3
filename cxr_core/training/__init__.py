"""Training and tuning the classifiers, the dataset folders they read, and test-set evaluation.
"""
