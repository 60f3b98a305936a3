"""CT volume retrieval: 3D embeddings, triplet / graded micro-F1 training, a faiss gallery index, metrics."""
