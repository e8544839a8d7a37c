"""nnserve serving package. Kept empty so that importing service.artifact loads no web stack."""

__version__ = "0.1.0"
