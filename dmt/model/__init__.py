"""Plain models that run in one process: the flat DLRM, the DMT model, and the transform between them."""
