"""Running a bundle: file batch prediction, the HTTP server, pulling a registered bundle.

Nothing here imports torch or transformers.
"""
