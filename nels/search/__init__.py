"""Queries -> ranked, explained results: linguistic, acoustic, joint and fused search."""
