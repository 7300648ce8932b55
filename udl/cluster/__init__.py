"""Clustering of embedding matrices."""
