"""stedge_runtime: torch-free Encoder and Reranker over stedge artifacts."""
