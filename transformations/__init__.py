"""transformations"""
