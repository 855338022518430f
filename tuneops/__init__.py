"""tuneops: validated, versioned, fine-tuned, gated and exported transformer models.

Kept import-light on purpose: `tuneops.runtime` must load where only onnxruntime,
tokenizers and numpy are installed.
"""

__version__ = "0.1.0"
